"""Throughput of skad detectors against the raw backbone doing the same backbone work.

DeviationNetworkDetector runs its backbone at two input scales (full and
half), so the raw reference runs the same timm ``features_only`` backbone on
the same batches at both scales: forward+backward for training, forward under
``no_grad`` for inference. The ratio detector/raw measures skad's overhead
(input conversion, balanced sampling, pseudo-anomaly synthesis, heads, loss,
optimiser step, skorch's loop). Inputs are uint8 arrays already at
``image_size`` so no resize is timed on either side.

It also times Perlin pseudo-anomaly synthesis of a 32 x 3 x 256 x 256 batch
against one training step of the default detector.

Run::

    python benchmarks/throughput.py [--repeats 5] [--sizes 128 224] [--device cpu]

Results go to ``benchmarks/results/throughput.csv`` (medians over repeats).
"""

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from skad import DeviationNetworkDetector
from skad.benchmarks import require_bench_extra
from skad.nn.backbones import create_feature_extractor

RESULTS = Path("benchmarks") / "results"


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}; {threads} threads"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def to_input(images, device):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return x.contiguous(memory_format=torch.channels_last).to(device)


def raw_rates(images, batch_size, steps, device):
    """Images/s of the bare backbone at both scales: (forward+backward, forward)."""
    # the raw reference gets the fastest layout too: channels-last model and inputs
    backbone = create_feature_extractor("efficientnet_lite0", out_indices=(-1,)).to(device)
    backbone = backbone.to(memory_format=torch.channels_last)
    x = to_input(images[:batch_size], device)

    def both_scales(inp):
        half = F.interpolate(inp, scale_factor=0.5, mode="bilinear", antialias=True)
        return backbone(inp)[-1].mean() + backbone(half)[-1].mean()

    backbone.train()
    both_scales(x).backward()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        backbone.zero_grad(set_to_none=True)
        both_scales(x).backward()
    sync(device)
    train = steps * batch_size / (time.perf_counter() - start)

    backbone.eval()
    with torch.no_grad():
        both_scales(x)
        sync(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            both_scales(to_input(images[i:i + batch_size], device))
        sync(device)
    infer = len(images) / (time.perf_counter() - start)
    return train, infer


def skad_rates(images, batch_size, steps, device, epochs=3):
    """Images/s of DeviationNetworkDetector: (training, score_samples)."""
    image_size = images.shape[1]
    det = DeviationNetworkDetector(
        image_size=image_size, batch_size=batch_size, max_epochs=epochs, steps_per_epoch=steps,
        device=device, random_state=0,
    )
    det.fit(images)  # no labels: the anomaly half of each batch is CutMix pseudo-anomalies
    # skorch's per-epoch durations exclude building the net and loading weights
    train = steps * batch_size / statistics.median(det.history_[1:, "dur"] or
                                                   det.history_[:, "dur"])
    det.score_samples(images[:batch_size])  # warm-up
    sync(device)
    start = time.perf_counter()
    det.score_samples(images)
    sync(device)
    infer = len(images) / (time.perf_counter() - start)
    return train, infer, det


def perlin_cost(det, repeats):
    """Median seconds of a 32x3x256x256 Perlin synthesis batch, or None if unavailable."""
    try:
        from skad.synthesis import PerlinAnomalySynthesizer
    except ImportError:
        return None
    synth = PerlinAnomalySynthesizer()
    x = torch.rand(32, 3, 256, 256)
    gen = torch.Generator().manual_seed(0)
    synth(x, generator=gen)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synth(x, generator=gen)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    """Run the throughput benchmark; ``argv`` as on the command line (default ``sys.argv``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "throughput.csv"))
    args = parser.parse_args(argv)
    require_bench_extra("the throughput benchmark")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.RandomState(0)
    rows = []
    for size in args.sizes:
        images = rng.randint(0, 256, (args.n_images, size, size, 3)).astype(np.uint8)
        runs = {"raw_train": [], "raw_infer": [], "skad_train": [], "skad_infer": []}
        for _ in range(args.repeats):
            rt, ri = raw_rates(images, args.batch_size, args.steps, args.device)
            st, si, det = skad_rates(images, args.batch_size, args.steps, args.device)
            for key, value in zip(runs, (rt, ri, st, si)):
                runs[key].append(value)
        med = {k: statistics.median(v) for k, v in runs.items()}
        step_s = args.batch_size / med["skad_train"]
        for mode in ("train", "infer"):
            rows.append({
                "detector": "DeviationNetworkDetector", "backbone": "efficientnet_lite0",
                "image_size": size, "batch_size": args.batch_size, "mode": mode,
                "raw_img_per_s": round(med[f"raw_{mode}"], 2),
                "skad_img_per_s": round(med[f"skad_{mode}"], 2),
                "ratio": round(med[f"skad_{mode}"] / med[f"raw_{mode}"], 3),
                "repeats": args.repeats, "device": args.device, "machine": machine(),
            })
            print(rows[-1])
        perlin = perlin_cost(det, args.repeats)
        if perlin is not None:
            rows.append({
                "detector": "PerlinAnomalySynthesizer (32x3x256x256)", "backbone": "",
                "image_size": 256, "batch_size": 32, "mode": "synthesis",
                "raw_img_per_s": "", "skad_img_per_s": round(32 / perlin, 2),
                "ratio": round(perlin / step_s, 3),  # share of one DevNet training step
                "repeats": args.repeats, "device": "cpu", "machine": machine(),
            })
            print(rows[-1], f"(training step at {size}px: {step_s:.3f}s)")
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    md = Path(args.out).with_suffix(".md")
    cmd = "python benchmarks/throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    md.write_text(f"# Throughput against the raw backbone\n\nCommand: `{cmd}` (medians of "
                  f"{args.repeats}).\n\n{df.to_markdown(index=False)}\n")
    print(f"wrote {args.out} and {md}")


if __name__ == "__main__":
    main()
