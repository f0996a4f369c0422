"""Encoder passes and feature-cache memory of the frozen-feature detectors on ELPV.

For PatchCore, PaDiM and BoundaryGuidedDetector fitted on the ELPV training
split (seed 42, 10 % contamination, 10 labelled anomalies: 1,266 images):
images that went through the frozen encoder during ``fit`` (counted by a
forward hook on the encoder module; one pass per training image is the
target), fit seconds, and the megabytes of cached training features at 128 and
256 px (measured on the cache of a real fit at 128 px; at 256 px from the
encoder's output shapes, times the number of images).

Run from the repository root::

    python benchmarks/feature_cache.py [--sizes 128 256] [--bgad-epochs 1]
"""

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

RESULTS = Path("benchmarks") / "results"


def _count_encoder_images(det):
    """Patch ``det``'s module build so that its encoder counts the images it sees."""
    counter = {"images": 0}
    build = det._build_module

    def counting_build(data):
        module = build(data)

        def hook(mod, inputs, output):
            counter["images"] += len(inputs[0])

        module.embedding.register_forward_hook(hook)
        return module

    det._build_module = counting_build
    return counter


def _cache_bytes(det, size, n_images):
    """Bytes of cached features of ``n_images`` at ``size`` px (from one image's encoding)."""
    module = det._build_module(None).eval()
    with torch.no_grad():
        out = module.embed(torch.rand(1, 3, size, size))
    levels = out if isinstance(out, (tuple, list)) else (out,)
    return n_images * sum(f.numel() * f.element_size() for f in levels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--bgad-epochs", type=int, default=1,
                        help="BGAD's training epochs here (the passes do not depend on it)")
    parser.add_argument("--out", default=str(RESULTS / "feature_cache"))
    args = parser.parse_args(argv)

    from skad import BoundaryGuidedDetector, PaDiMDetector, PatchCoreDetector
    from skad._images import resize_images
    from skad.benchmarks import require_bench_extra
    from skad.datasets import load_elpv
    from skad.model_selection import contaminated_split

    require_bench_extra("the feature-cache benchmark")
    elpv = load_elpv()
    images = resize_images(elpv.images, 128)
    X, y, _, _ = contaminated_split(images[elpv.probability == 0],
                                    images[elpv.probability == 1], n_labeled=10,
                                    contamination=0.1, random_state=42)
    makers = {
        "PatchCoreDetector": lambda: PatchCoreDetector(image_size=128, random_state=0),
        "PaDiMDetector": lambda: PaDiMDetector(image_size=128, random_state=0),
        "BoundaryGuidedDetector": lambda: BoundaryGuidedDetector(
            image_size=128, random_state=0, max_epochs=args.bgad_epochs),
    }
    rows = []
    for name, make in makers.items():
        for contamination in ("auto", 0.1):
            det = make().set_params(contamination=contamination)
            counter = _count_encoder_images(det)
            start = time.perf_counter()
            det.fit(X, y)
            row = {"detector": name, "contamination": contamination, "n_train": len(X),
                   "encoder_images": counter["images"],
                   "passes_per_image": counter["images"] / len(X),
                   "fit_seconds": round(time.perf_counter() - start, 1)}
            for size in args.sizes:
                row[f"cache_MB_{size}px"] = round(_cache_bytes(det, size, len(X)) / 2**20, 1)
            rows.append(row)
            print(row, flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(f"{args.out}.csv", index=False)
    load = os.getloadavg()
    cmd = "python benchmarks/feature_cache.py " + shlex.join(sys.argv[1:] if argv is None
                                                             else argv)
    Path(f"{args.out}.md").write_text(
        f"# Encoder passes and feature cache per fit (ELPV, 1,266 training images)\n\n"
        f"Command: `{cmd}`; load average at the end {load[0]:.1f}. BGAD's extra encoder "
        f"images, if any, are its pseudo-anomalies (none with image-level labels).\n\n"
        f"{df.to_markdown(index=False)}\n")
    print(df.to_markdown(index=False))


if __name__ == "__main__":
    main()
