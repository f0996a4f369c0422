"""Throughput of PatchCoreDetector and PaDiMDetector against the raw backbone forward rate.

The raw reference runs the same timm ``features_only`` backbone with the same
weights, levels, image size and batch size on ready-made channels-last input
tensors under ``no_grad``: the backbone work both detectors do in ``fit`` (once
per training image; PaDiM twice, statistics then training scores) and in
``score_samples``. The ratio detector / raw measures everything else: input
conversion, skorch's batching, feature alignment and pooling, the
nearest-neighbour search (PatchCore) or the Mahalanobis distances (PaDiM),
and, in ``fit``, the coreset, training scores and Gaussian estimation.
Inputs are uint8 images already at ``image_size`` so no resize is timed on
either side. PatchCore's scoring cost grows with its bank (``2 * patches *
bank * channels`` flops per image), so it is measured at several training-set
sizes; ``--n-train 1131`` gives the bank of an ELPV fit at 128 px.

Medians over ``--repeats`` (scoring, raw) and ``--fit-repeats`` (fit), each
repeat timing raw and detector back to back. ``bank_bytes`` is the size of
the fitted model's buffers (memory bank, or means and precisions); they are
the whole fitted state apart from the backbone.

Run from the repository root::

    python benchmarks/baselines_throughput.py [--repeats 5] [--fit-repeats 3] \\
        [--image-size 128] [--n-train 256 1131] [--device cpu]

Results go to ``benchmarks/results/baselines_throughput.{csv,md}``.
"""

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skad import PaDiMDetector, PatchCoreDetector
from skad.benchmarks.throughput import machine
from skad.nn.backbones import IMAGENET_MEAN, IMAGENET_STD, create_feature_extractor

RESULTS = Path("benchmarks") / "results"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raw_forward_rate(images, out_indices, batch_size, device):
    """Images/s of the bare pretrained backbone on normalised channels-last batches."""
    backbone = create_feature_extractor("efficientnet_lite0", out_indices=out_indices)
    backbone = backbone.eval().to(device).to(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255)
    batches = [((x[i:i + batch_size] - mean) / std).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(x), batch_size)]
    with torch.no_grad():
        backbone(batches[0])  # warm-up
        sync(device)
        start = time.perf_counter()
        for batch in batches:
            backbone(batch)
        sync(device)
    return len(images) / (time.perf_counter() - start)


def score_rate(det, images, batch_size, device):
    det.score_samples(images[:batch_size])  # warm-up
    sync(device)
    start = time.perf_counter()
    det.score_samples(images)
    sync(device)
    return len(images) / (time.perf_counter() - start)


def buffer_bytes(module):
    """Bytes of the fitted buffers: everything but the frozen embedding's."""
    skip = {id(b) for b in module.embedding.buffers()}
    return sum(b.numel() * b.element_size() for b in module.buffers() if id(b) not in skip)


def models(args):
    common = dict(image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                  random_state=0)
    for n_train in args.n_train:
        yield "PatchCoreDetector", n_train, (2, 3), lambda: PatchCoreDetector(**common)
    yield "PaDiMDetector", args.n_train[0], (1, 2, 3), lambda: PaDiMDetector(**common)


def main(argv=None):
    """Run the benchmark; ``argv`` as on the command line (default ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, nargs="+", default=[256, 1131])
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "baselines_throughput"))
    parser.add_argument("--note", default="",
                        help="a sentence on the conditions (e.g. concurrent load) for the table")
    args = parser.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.RandomState(0)
    size = args.image_size
    test = rng.randint(0, 256, (args.n_test, size, size, 3)).astype(np.uint8)
    rows = []
    for name, n_train, levels, make in models(args):
        train = rng.randint(0, 256, (n_train, size, size, 3)).astype(np.uint8)
        raw, fit, score = [], [], []
        for repeat in range(max(args.repeats, args.fit_repeats)):
            raw.append(raw_forward_rate(test, levels, args.batch_size, args.device))
            if repeat < args.fit_repeats:
                start = time.perf_counter()
                det = make().fit(train)
                sync(args.device)
                fit.append(n_train / (time.perf_counter() - start))
            if repeat < args.repeats:
                score.append(score_rate(det, test, args.batch_size, args.device))
        module = det.module_
        bank = len(module.memory_bank) if name == "PatchCoreDetector" else len(module.mean)
        raw_rate = statistics.median(raw)
        for mode, rates in (("fit", fit), ("score", score)):
            rows.append({
                "detector": name, "out_indices": str(levels), "image_size": size,
                "batch_size": args.batch_size, "n_train": n_train,
                "bank_rows": bank, "bank_bytes": buffer_bytes(module), "mode": mode,
                "raw_img_per_s": round(raw_rate, 1),
                "skad_img_per_s": round(statistics.median(rates), 1),
                "ratio": round(statistics.median(rates) / raw_rate, 3),
                "repeats": len(rates), "device": args.device,
            })
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(f"{args.out}.csv", index=False)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                   if k in os.environ)
    cmd = " ".join(filter(None, [env, "python benchmarks/baselines_throughput.py",
                                 shlex.join(argv)]))
    Path(f"{args.out}.md").write_text(
        "# Throughput: PatchCore and PaDiM vs the raw backbone forward rate\n\n"
        f"Command: `{cmd}`.\nMachine: {machine()}.\n"
        + (f"{args.note}\n" if args.note else "") + "\n"
        "`ratio` = detector images/s / raw backbone forward images/s (same backbone, levels, "
        "image size and batch); `bank_rows` = memory-bank patches (PatchCore) or grid "
        "positions (PaDiM); `bank_bytes` = the fitted buffers.\n\n"
        f"{df.to_markdown(index=False)}\n"
    )
    print(df.to_markdown(index=False))


if __name__ == "__main__":
    main()
