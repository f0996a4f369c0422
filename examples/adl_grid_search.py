"""Tune AdaptiveDeviationDetector's lam, alpha and gamma with GridSearchCV.

Labels use predict's codes (-1 known anomaly, +1 unlabelled), so
``scoring="roc_auc"`` ranks by how well ``decision_function`` separates the
labelled anomalies from the rest, and ``LabelledAnomalyKFold`` keeps a few
labelled anomalies in every fold (or says how many folds the labels allow).

Run::

    python examples/adl_grid_search.py [--epochs 2] [--image-size 96]

on ELPV (``pip install -e ".[bench]"``); ``grid_search`` is also run on tiny
images by the tests.
"""

import argparse

import numpy as np
from sklearn.model_selection import GridSearchCV

from skad import AdaptiveDeviationDetector
from skad.model_selection import LabelledAnomalyKFold

PARAM_GRID = {"lam": [0.1, 1.0], "alpha": [0.1, 0.5], "gamma": [5.0]}


def grid_search(X, y, param_grid=PARAM_GRID, n_splits=3, random_state=0, **detector_params):
    """Fit ``GridSearchCV(AdaptiveDeviationDetector(**detector_params), param_grid)``."""
    search = GridSearchCV(
        AdaptiveDeviationDetector(random_state=random_state, **detector_params),
        param_grid,
        scoring="roc_auc",
        cv=LabelledAnomalyKFold(n_splits=n_splits, shuffle=True, random_state=random_state),
        error_score="raise",
    )
    return search.fit(X, y)


def main():
    from skad.datasets import load_elpv
    from skad.model_selection import contaminated_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    elpv = load_elpv()
    X_train, y_train, _, _ = contaminated_split(
        elpv.images[elpv.probability == 0], elpv.images[elpv.probability == 1],
        n_labeled=30, contamination=0.1, random_state=42,
    )
    search = grid_search(X_train, y_train, image_size=args.image_size,
                         max_epochs=args.epochs)
    print(f"best {search.best_params_}: cross-validated AUROC {search.best_score_:.3f}")
    for params, score in zip(search.cv_results_["params"],
                             search.cv_results_["mean_test_score"]):
        print(f"  {params}: {score:.3f}")
    return np.asarray(search.cv_results_["mean_test_score"])


if __name__ == "__main__":
    main()
