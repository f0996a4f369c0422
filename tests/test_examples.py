"""The examples' code paths, run on tiny images."""

import importlib.util
from pathlib import Path

import numpy as np
from _helpers import make_tiny_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            batch_size=8, device="cpu", fuse_channels=8, n_reference=500)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_search_over_lam_alpha_gamma():
    example = _load("adl_grid_search")
    X, is_anomaly, _ = make_tiny_images(n_normal=24, n_anomalous=6)
    y = np.where(is_anomaly, -1, 1)
    grid = {"lam": [0.1, 1.0], "alpha": [0.1], "gamma": [5.0]}
    search = example.grid_search(X, y, param_grid=grid, n_splits=2, **TINY)
    assert len(search.cv_results_["params"]) == 2
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_["lam"] in (0.1, 1.0)


def test_contamination_study_pipeline():
    example = _load("adl_contamination_study")
    X, is_anomaly, _ = make_tiny_images(n_normal=30, n_anomalous=10, seed=3)
    normal, anomalous = X[~is_anomaly], X[is_anomaly]
    X_train, y_train = np.r_[normal[:20], anomalous[:2]], np.r_[np.ones(20), -np.ones(2)]
    X_test, y_test = np.r_[normal[20:], anomalous[2:6]], np.r_[np.ones(10), -np.ones(4)]
    table = example.contamination_study(
        X_train, y_train.astype(int), X_test, y_test.astype(int), anomalous[6:],
        levels=(0.0, 0.2), **TINY,
    )
    assert list(table["contamination"]) == [0.0, 0.2]
    assert list(table["n_injected"]) == [0, 4]  # 20% of the 20 unlabelled images
    assert table["auroc"].between(0, 1).all()
