"""Localisation benchmark: MultiCue's gradient maps against ADL's maps on synthetic defects.

Data: :func:`skad.datasets.make_defect_images` at its default difficulty
(64 px, defect sizes 0.08-0.3), split per seed by
:func:`skad.model_selection.contaminated_split` into a training set with
``--contamination`` unlabelled anomalies and ``--n-labeled`` labelled
anomalies (their masks passed to ``MultiCueDetector.fit``), and a test set of
normals and the other anomalies.

Rows, each from one fit per detector and seed:

- ``MultiCue`` -- the multi-cue gradient maps (``localization="saliency"``) and
  the fused image score; ``MultiCue <cue>`` the image score of one cue alone;
- ``MultiCue segmentation map`` -- the same fit's segmentation head;
- ``MultiCue, no masks`` -- with ``--no-masks-row``: MultiCue fitted without the
  labelled anomalies' masks;
- ``ADL segmentation`` and ``ADL saliency`` -- one ADL fit, its segmentation
  head and its input-gradient saliency of the deviation score;
- with ``--groups ... bgad``: ``BGAD`` (fitted with the labelled anomalies' masks, its
  likelihood map; the same fit's log-likelihood map) and ``BGAD, no masks``;
- with ``--groups ... baselines``: the label-free ``PatchCore`` and ``PaDiM`` maps.

Pixel AUROC and AUPRO (FPR <= 0.3) over all test pixels, pixel AUROC over the
pixels of the anomalous test images only (where, not whether: gradient maps are
normalised per image, so a normal image's map spans [0, 1] too), and image
AUROC of the row's score. The seed seeds both the data and the detectors.
Per-seed rows go to ``<out>_runs.csv``, means to ``<out>.csv`` and ``<out>.md``.

Run from the repository root::

    python benchmarks/localization.py [--seeds 0 1] [--steps 20] [--threads 1]
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path("benchmarks") / "results"


def split(seed, args):
    """Contaminated split of synthetic defect images, with the masks training and testing need."""
    from skad.datasets import make_defect_images
    from skad.model_selection import contaminated_split

    data = make_defect_images(args.n_samples, anomaly_ratio=args.anomaly_ratio,
                              random_state=seed)
    normal, anomalous = data.target == 1, data.target == -1
    X_train, y_train, X_test, y_test, masks_test, idx = contaminated_split(
        data.images[normal], data.images[anomalous], n_labeled=args.n_labeled,
        contamination=args.contamination, masks_anomalous=data.masks[anomalous],
        random_state=seed, return_indices=True,
    )
    all_masks = np.concatenate([data.masks[normal], data.masks[anomalous]])
    return X_train, y_train, all_masks[idx.train], X_test, y_test, masks_test


def _detector(cls, seed, args, **kw):
    return cls(image_size=args.image_size, max_epochs=args.epochs, steps_per_epoch=args.steps,
               batch_size=args.batch_size, lr=args.lr, device=args.device, random_state=seed,
               **kw)


def _pixel_row(name, maps, masks_test, image_scores, y_test, seconds):
    from skad.metrics import aupro, image_auroc, pixel_auroc

    row = {"model": name, "pixel_auroc": np.nan, "aupro": np.nan,
           "pixel_auroc_anomalous": np.nan}
    if maps is not None:
        anomalous = np.asarray(y_test) == -1
        row.update(pixel_auroc=pixel_auroc(masks_test, maps), aupro=aupro(masks_test, maps),
                   pixel_auroc_anomalous=pixel_auroc(masks_test[anomalous], maps[anomalous]))
    return {**row, "image_auroc": image_auroc(y_test, image_scores), "seconds": seconds}


def run_seed(seed, args):
    """All rows of one seed."""
    X_train, y_train, masks_train, X_test, y_test, masks_test = split(seed, args)
    rows = []
    if "bgad" in args.groups:
        rows += _bgad_rows(seed, args, X_train, y_train, masks_train, X_test, y_test,
                           masks_test)
    if "baselines" in args.groups:
        rows += _baseline_rows(seed, args, X_train, y_train, X_test, y_test, masks_test)
    if "multicue" in args.groups:
        rows += _multicue_rows(seed, args, X_train, y_train, masks_train, X_test, y_test,
                               masks_test)
    if "adl" in args.groups:
        rows += _adl_rows(seed, args, X_train, y_train, X_test, y_test, masks_test)
    for row in rows:
        row["seed"] = seed
        print(row, flush=True)
    return rows


def _bgad_rows(seed, args, X_train, y_train, masks_train, X_test, y_test, masks_test):
    """BGAD with the labelled anomalies' masks (both map forms), and without masks."""
    from skad import BoundaryGuidedDetector

    rows = []
    for name, masks in (("BGAD", masks_train), ("BGAD, no masks", None)):
        start = time.perf_counter()
        det = BoundaryGuidedDetector(image_size=args.image_size, device=args.device,
                                     random_state=seed).fit(X_train, y_train, masks=masks)
        scores, maps = -det.score_samples(X_test), det.localize(X_test)
        seconds = time.perf_counter() - start
        rows.append(_pixel_row(name, maps, masks_test, scores, y_test, seconds))
        if masks is not None:
            det.module_.map = "log_likelihood"  # a scoring-time form: no refit
            rows.append(_pixel_row(f"{name} (log_likelihood map)", det.localize(X_test),
                                   masks_test, -det.score_samples(X_test), y_test, seconds))
    return rows


def _baseline_rows(seed, args, X_train, y_train, X_test, y_test, masks_test):
    """The label-free PatchCore and PaDiM maps at the benchmark's image size."""
    from skad import PaDiMDetector, PatchCoreDetector

    rows = []
    for cls in (PatchCoreDetector, PaDiMDetector):
        start = time.perf_counter()
        det = cls(image_size=args.image_size, device=args.device,
                  random_state=seed).fit(X_train, y_train)
        scores, maps = -det.score_samples(X_test), det.localize(X_test)
        rows.append(_pixel_row(cls.__name__.removesuffix("Detector"), maps, masks_test,
                               scores, y_test, time.perf_counter() - start))
    return rows


def _multicue_rows(seed, args, X_train, y_train, masks_train, X_test, y_test, masks_test):
    from skad import MultiCueDetector

    rows = []
    start = time.perf_counter()
    det = _detector(MultiCueDetector, seed, args).fit(X_train, y_train, masks=masks_train)
    cues = det.cue_scores(X_test)
    maps = det.localize(X_test)
    seconds = time.perf_counter() - start
    rows.append(_pixel_row("MultiCue", maps, masks_test, cues["fused"], y_test, seconds))
    for cue in ("deviation", "uncertainty", "segmentation"):
        rows.append(_pixel_row(f"MultiCue {cue} cue", None, masks_test, cues[cue], y_test,
                               seconds))
    det.set_params(localization="segmentation")  # a scoring-time option: no refit
    rows.append(_pixel_row("MultiCue segmentation map", det.localize(X_test), masks_test,
                           cues["fused"], y_test, seconds))

    if args.no_masks_row:
        start = time.perf_counter()
        det = _detector(MultiCueDetector, seed, args).fit(X_train, y_train)
        scores, maps = -det.score_samples(X_test), det.localize(X_test)
        rows.append(_pixel_row("MultiCue, no masks", maps, masks_test, scores, y_test,
                               time.perf_counter() - start))
    return rows


def _adl_rows(seed, args, X_train, y_train, X_test, y_test, masks_test):
    from skad import AdaptiveDeviationDetector

    rows = []
    start = time.perf_counter()
    det = _detector(AdaptiveDeviationDetector, seed, args).fit(X_train, y_train)
    scores = -det.score_samples(X_test)
    seg_maps = det.localize(X_test)
    det.set_params(localization="saliency")
    sal_maps = det.localize(X_test)
    seconds = time.perf_counter() - start
    rows.append(_pixel_row("ADL segmentation", seg_maps, masks_test, scores, y_test, seconds))
    rows.append(_pixel_row("ADL saliency", sal_maps, masks_test, scores, y_test, seconds))
    return rows


def build_parser():
    parser = argparse.ArgumentParser(prog="benchmarks/localization.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n-samples", type=int, default=500)
    parser.add_argument("--anomaly-ratio", type=float, default=0.3)
    parser.add_argument("--contamination", type=float, default=0.1)
    parser.add_argument("--n-labeled", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128,
                        help="network input side (the 64 px images are upsampled)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--groups", nargs="+", default=["multicue", "adl"],
                        choices=["multicue", "adl", "bgad", "baselines"],
                        help="which detectors' rows (default: %(default)s)")
    parser.add_argument("--no-masks-row", action="store_true",
                        help="also fit MultiCue without the labelled anomalies' masks")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for this run (default: torch's choice)")
    parser.add_argument("--out", default=str(RESULTS / "localization"),
                        help="output prefix: <out>.csv, <out>.md, <out>_runs.csv")
    return parser


def main(argv=None):
    """Run the benchmark; returns the summary DataFrame."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    df = pd.DataFrame([row for seed in args.seeds for row in run_seed(seed, args)])
    summary = df.groupby("model", sort=False).agg(
        pixel_auroc=("pixel_auroc", "mean"), pixel_auroc_std=("pixel_auroc", "std"),
        aupro=("aupro", "mean"), aupro_std=("aupro", "std"),
        pixel_auroc_anomalous=("pixel_auroc_anomalous", "mean"),
        image_auroc=("image_auroc", "mean"), image_auroc_std=("image_auroc", "std"),
        seconds=("seconds", "median"), n_seeds=("seed", "nunique"),
    ).reset_index()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(f"{args.out}_runs.csv", index=False)
    summary.to_csv(f"{args.out}.csv", index=False)
    cmd = "python benchmarks/localization.py " + shlex.join(argv)
    table = summary.astype(object).where(summary.notna(), None).to_markdown(
        index=False, floatfmt=".3f", missingval="")
    Path(f"{args.out}.md").write_text(
        "# Localisation on synthetic defects (make_defect_images, default difficulty)\n\n"
        f"Command: `{cmd.strip()}`; total {(time.perf_counter() - started) / 60:.1f} min on "
        f"this machine. Seconds: fit + scoring + maps per detector (median over seeds).\n\n"
        f"{table}\n"
    )
    print(table)
    return summary


if __name__ == "__main__":
    main()
