"""What ``contamination="auto"`` means for every detector: false alarms on held-out normals (ELPV).

For each detector of skad's registry, fitted on ELPV's DRA split (10
labelled anomalies, contamination ``--levels``, 128 px) with a CPU budget
(``BUDGETS``), this script records the share of images its ``"auto"``
threshold flags -- unlabelled training images, held-out normal cells, held-out
defective cells -- and, for comparison, the same after
``skad.thresholds.calibrate(det, X_cal, max_fpr=0.05)`` on half of the
held-out normal cells (measured on the other half).

Run from the repository root::

    python benchmarks/auto_threshold.py [--seed 42] [--levels 0.0 0.1]
"""

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: Training budget of the trained detectors: the ELPV benchmark's CPU protocol (elpv.md).
TRAINED_BUDGET = {"max_epochs": 5, "steps_per_epoch": 40, "lr": 1e-3, "batch_size": 16}

#: Budget per detector class; a detector not listed gets TRAINED_BUDGET's parameters it has.
BUDGETS = {
    "PatchCoreDetector": {},
    "PaDiMDetector": {},
    # BGAD's defaults are its CPU budget: 5 x 40 batches of 32 images at 128 px
    "BoundaryGuidedDetector": {},
}

MAX_FPR = 0.05


def _budget(cls):
    params = cls().get_params()
    budget = BUDGETS.get(cls.__name__)
    if budget is None:
        budget = {k: v for k, v in TRAINED_BUDGET.items() if k in params}
    return budget


def _describe(budget):
    return ", ".join(f"{k}={v}" for k, v in budget.items()) or "defaults"


def run_one(cls, X_train, y_train, X_test, y_test, *, image_size, seed, max_fpr=MAX_FPR):
    """Fit ``cls`` and measure its auto and calibrated thresholds; one result row."""
    from skad.metrics import image_auroc
    from skad.thresholds import calibrate

    budget = _budget(cls)
    det = cls(image_size=image_size, random_state=seed, **budget)
    start = time.perf_counter()
    det.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    auto_offset = det.offset_
    train_scores = det.score_samples(X_train[y_train == 1])
    test_scores = det.score_samples(X_test)
    normal = np.flatnonzero(y_test == 1)
    half = np.random.RandomState(seed).permutation(normal)
    cal, held = half[: len(half) // 2], half[len(half) // 2:]
    calibrate(det, X_test[cal], max_fpr=max_fpr)
    info = det.calibration_
    anomalous = y_test == -1
    return {
        "detector": cls.__name__,
        "budget": _describe(budget),
        "auto offset_": auto_offset,
        "auto: flagged unlabelled training": np.mean(train_scores < auto_offset),
        "auto: flagged held-out normals": np.mean(test_scores[normal] < auto_offset),
        "auto: flagged held-out anomalies": np.mean(test_scores[anomalous] < auto_offset),
        f"calibrated {max_fpr:g}: flagged new normals": np.mean(test_scores[held] < det.offset_),
        "calibrated: 95% bound": info["false_alarm_rate_upper"],
        "calibrated: flagged anomalies": np.mean(test_scores[anomalous] < det.offset_),
        "image AUROC": image_auroc(y_test, -test_scores),
        "fit seconds": seconds,
        "n held-out normals": len(normal),
        "n calibration / new normals": f"{len(cal)} / {len(held)}",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks/auto_threshold.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1],
                        help="contamination levels of the training set")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--detectors", nargs="+", default=None,
                        help="registry names (default: every registered detector)")
    parser.add_argument("--out", default="benchmarks/results/auto_threshold.md")
    args = parser.parse_args(argv)

    import torch

    from skad._images import resize_images
    from skad._registry import DETECTORS, detector_class
    from skad.datasets import load_elpv
    from skad.model_selection import contaminated_split

    names = args.detectors or list(DETECTORS)
    elpv = load_elpv()
    images = resize_images(elpv.images, args.image_size)
    rows = []
    for level in args.levels:
        X_train, y_train, X_test, y_test = contaminated_split(
            images[elpv.probability == 0], images[elpv.probability == 1], n_labeled=10,
            contamination=level, random_state=args.seed,
        )
        for name in names:
            row = run_one(detector_class(name), X_train, y_train, X_test, y_test,
                          image_size=args.image_size, seed=args.seed)
            rows.append({"contamination": level, **row})
            print({k: (round(float(v), 3) if isinstance(v, float) else v)
                   for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    load = os.getloadavg()
    command = " ".join(["python", "benchmarks/auto_threshold.py", *map(shlex.quote, sys.argv[1:])])
    header = (
        "# contamination='auto' on ELPV: share of images flagged, and calibrate(max_fpr=0.05)\n\n"
        f"Command: `{command}` (seed {args.seed}, {args.image_size} px, 10 labelled anomalies, "
        f"DRA's split). {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average at the "
        f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), "
        f"{time.strftime('%Y-%m-%d')}.\n\n"
        "Columns: `auto: flagged ...` is the share of images with `score_samples < offset_` "
        "for the offset `fit` sets with `contamination='auto'`; `calibrated` rows set "
        "`offset_` with `skad.thresholds.calibrate(det, X_cal, max_fpr=0.05)` on a random half "
        "of the held-out normal cells and count the other half (`new normals`); the 95% bound "
        "is the one-sided Clopper-Pearson bound of that threshold's false-alarm rate.\n\n"
    )
    Path(args.out).write_text(header + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    return table


if __name__ == "__main__":
    main()
