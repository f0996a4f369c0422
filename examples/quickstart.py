"""Quickstart: few-shot anomaly detection on ELPV solar cells with contaminated training data.

The DRA/DevNet protocol (ALGORITHMS §0.6): normal cells are those with defect
probability 0, anomalies those with probability 1; the normals are split
75/25 with ``random_state=42``; 10 labelled anomalies and a 10% contamination
of unlabelled anomalies enter training; both are removed from the test set.

A DeviationNetworkDetector on the embedded ImageNet EfficientNet-Lite0 weights
is trained and compared with a label-free reference: the nearest-neighbour
distance of each test image's patch features (same frozen backbone) to the
training images' patch features.

Run::

    python examples/quickstart.py [--epochs 3] [--image-size 128] [--device auto]

needs ``pip install -e ".[bench]"`` (the ``elpv-dataset`` package).
"""

import argparse
import time

import numpy as np

from skad import DeviationNetworkDetector
from skad._baselines import nearest_neighbour_scores
from skad.datasets import load_elpv
from skad.metrics import image_auprc, image_auroc
from skad.model_selection import contaminated_split


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--contamination", type=float, default=0.10)
    parser.add_argument("--n-labeled", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    elpv = load_elpv()
    normal = elpv.images[elpv.probability == 0]
    anomalous = elpv.images[elpv.probability == 1]
    X_train, y_train, X_test, y_test = contaminated_split(
        normal, anomalous, n_labeled=args.n_labeled, contamination=args.contamination,
        random_state=args.seed,
    )
    print(f"ELPV: {len(X_train)} training images ({np.sum(y_train == -1)} labelled anomalies, "
          f"{args.contamination:.0%} contamination), {len(X_test)} test images "
          f"({np.sum(y_test == -1)} anomalous)")

    start = time.perf_counter()
    det = DeviationNetworkDetector(
        image_size=args.image_size, max_epochs=args.epochs, device=args.device,
        random_state=args.seed, verbose=1,
    ).fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    anomaly_score = -det.score_samples(X_test)

    start = time.perf_counter()
    reference = nearest_neighbour_scores(X_train[y_train == 1], X_test,
                                         image_size=args.image_size)
    ref_s = time.perf_counter() - start

    print(f"\n{'model':<44}{'AUROC':>8}{'AUPRC':>8}{'time':>9}")
    for name, scores, seconds in [
        (f"DeviationNetworkDetector ({args.epochs} epochs)", anomaly_score, fit_s),
        ("nearest-neighbour patch distance (no labels)", reference, ref_s),
    ]:
        print(f"{name:<44}{image_auroc(y_test, scores):>8.3f}"
              f"{image_auprc(y_test, scores):>8.3f}{seconds:>8.0f}s")


if __name__ == "__main__":
    main()
