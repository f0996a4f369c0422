"""Hyperparameter search across processes: joblib's loky backend and dask.distributed.

A GridSearchCV of a skad detector must give the same result whether its fits
run in this process, in loky worker processes or on dask workers: fits are
seeded by ``random_state`` only, never by where they run. A second scorer
returns the process id that scored each split, which proves the fits really
ran elsewhere.
"""

import functools
import logging
import os

import joblib
import numpy as np
import pytest
from _helpers import make_tiny_images
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skad import DeviationNetworkDetector

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            batch_size=8, device="cpu", random_state=0)
# Two candidates whose scores differ: 2 folds x 2 candidates + the refit = 5 tiny fits.
# Every detector crosses process boundaries the same way (pickled estimator, fitted in the
# worker); one cheap detector keeps this module fast.
GRID = {"lr": [1e-4, 1e-2]}
DETECTORS = {
    "devnet": (DeviationNetworkDetector, {}),
}


def _pid(estimator, X, y):
    """Scorer: the id of the process that scores the split."""
    return float(os.getpid())


def _search(case, n_jobs=None):
    cls, extra = DETECTORS[case]
    X, is_anomaly, _ = make_tiny_images(n_normal=16, n_anomalous=4)
    y = np.where(is_anomaly, -1, 1)
    search = GridSearchCV(
        cls(**TINY, **extra),
        GRID,
        scoring={"roc_auc": "roc_auc", "pid": _pid},
        refit="roc_auc",
        cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=0),
        n_jobs=n_jobs,
        error_score="raise",
    )
    return search.fit(X, y)


def _fit_pids(search):
    return {int(p) for k in ("split0_test_pid", "split1_test_pid") for p in search.cv_results_[k]}


def _assert_same_search(parallel, sequential):
    assert parallel.best_params_ == sequential.best_params_
    assert parallel.best_index_ == sequential.best_index_
    for key in ("split0_test_roc_auc", "split1_test_roc_auc", "mean_test_roc_auc",
                "rank_test_roc_auc"):
        np.testing.assert_allclose(parallel.cv_results_[key], sequential.cv_results_[key],
                                   atol=1e-6, err_msg=key)
    # the refit best estimator scores the same too
    X, _, _ = make_tiny_images(n_normal=6, n_anomalous=2, seed=5)
    np.testing.assert_allclose(parallel.best_estimator_.score_samples(X),
                               sequential.best_estimator_.score_samples(X), rtol=1e-5, atol=1e-6)


@functools.cache
def _sequential(case):
    """The reference search, in this process; computed once per detector."""
    search = _search(case)
    assert _fit_pids(search) == {os.getpid()}
    # the grid matters: the two candidates do not score the same
    assert np.ptp(search.cv_results_["mean_test_roc_auc"]) > 1e-3
    return search


@pytest.mark.parametrize("case", sorted(DETECTORS))
def test_grid_search_loky_matches_sequential(case):
    parallel = _search(case, n_jobs=2)  # joblib's default backend: loky worker processes
    assert os.getpid() not in _fit_pids(parallel)
    _assert_same_search(parallel, _sequential(case))


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    # Worker processes with one thread each: detectors seed torch's global RNG during
    # fit, so two fits must not run in one process at the same time.
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=logging.CRITICAL,
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def test_grid_search_dask_matches_sequential(dask_client):
    # one detector is enough here: what crosses to the workers is the same as with loky
    worker_pids = set(dask_client.run(os.getpid).values())
    with joblib.parallel_backend("dask"):
        parallel = _search("devnet")
    assert _fit_pids(parallel) <= worker_pids
    _assert_same_search(parallel, _sequential("devnet"))
