"""The detector contract, checked for every skad detector.

The detectors are those of ``skad._registry.DETECTORS``: a new detector joins
these tests by its registry line. Each is made tiny with the shared ``TINY``
settings (those among its parameters) and, only where its defaults are slow
at 32 px, a line of ``FAST``.
"""

import pickle
import warnings

import joblib
import numpy as np
import pytest
from _helpers import ignoring_y, make_tiny_images
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils.estimator_checks import parametrize_with_checks

from skad._registry import DETECTORS as REGISTRY
from skad._registry import detector_class

TINY = dict(
    backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
    batch_size=8, device="cpu", random_state=0,
)

#: Per-detector settings that keep a 32 px fit fast.
FAST = {
    "AdaptiveDeviationDetector": {"fuse_channels": 8, "n_reference": 500},
    "MultiCueDetector": {"fuse_channels": 8, "n_reference": 500},
    "PatchCoreDetector": {"coreset_ratio": 0.5},
    "PaDiMDetector": {"n_features": 16},
    "BoundaryGuidedDetector": {"n_blocks": 2, "cond_dim": 16, "n_pseudo": 8,
                               "steps_per_epoch": 2},
    "DisentangledResidualDetector": {"steps_per_epoch": 3, "n_reference": 500},
}


def _tiny(cls):
    def make(**kw):
        params = cls().get_params()
        settings = {k: v for k, v in {**TINY, **FAST.get(cls.__name__, {})}.items()
                    if k in params}
        return cls(**{**settings, **kw})

    return make


DETECTORS = {cls: _tiny(detector_class(cls)) for _, cls in REGISTRY.values()}

# Checks of scikit-learn's suite that a skad detector fails on purpose, with the reason.
# Most fit with y = class labels such as {0, 1, 2}; skad's contract makes those a
# ValueError (y uses predict's codes: -1 known anomaly, +1 unlabelled).
Y_CODES = "fits with y in {0, 1, 2}; skad rejects codes other than -1/+1 by contract"
Y_CODE_CHECKS = [
    "check_classifier_data_not_an_array", "check_dict_unchanged",
    "check_dont_overwrite_parameters", "check_dtype_object", "check_estimators_dtypes",
    "check_estimators_fit_returns_self", "check_estimators_nan_inf",
    "check_estimators_overwrite_params", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_fit2d_1feature", "check_fit2d_predict1d",
    "check_fit_check_is_fitted", "check_fit_idempotent", "check_fit_score_takes_y",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_n_features_in", "check_n_features_in_after_fitting", "check_pipeline_consistency",
    "check_readonly_memmap_input", "check_positive_only_tag_during_fit",
]
AUTO_OFFSET = (
    "contamination='auto' keeps the method's calibrated threshold (deviation z > 1.96), "
    "which flags none of the check's anomaly-free blobs; a float contamination passes"
)
OUTLIER_CHECKS = {"check_outliers_train": AUTO_OFFSET, "check_outliers_fit_predict": AUTO_OFFSET}
EXPECTED_FAILED_CHECKS = {**dict.fromkeys(Y_CODE_CHECKS, Y_CODES), **OUTLIER_CHECKS}

parametrize_detectors = pytest.mark.parametrize("name", sorted(DETECTORS))


@pytest.fixture(scope="module")
def data():
    X, is_anomaly, masks = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    y = np.where(is_anomaly, -1, 1)
    return X, y


@pytest.fixture(scope="module")
def fitted(data):
    """One fitted detector per name, shared by the read-only tests."""
    X, y = data
    return {name: make(contamination=0.1).fit(X, y) for name, make in DETECTORS.items()}


@parametrize_detectors
def test_clone_and_get_params_round_trip(name):
    det = DETECTORS[name]()
    params = det.get_params()
    twin = clone(det)
    assert twin.get_params() == params
    assert type(twin)(**params).get_params() == params
    assert not any(p.endswith("_") for p in params)


@parametrize_detectors
def test_no_fitted_attributes_before_fit(name):
    det = DETECTORS[name]()
    assert [k for k in vars(det) if k.endswith("_")] == []


@parametrize_detectors
@pytest.mark.parametrize(
    "method", ["score_samples", "decision_function", "predict", "localize"]
)
def test_not_fitted_error(name, method, data):
    with pytest.raises(NotFittedError):
        getattr(DETECTORS[name](), method)(data[0])


@parametrize_detectors
def test_fit_returns_self_and_leaves_inputs_untouched(name, data):
    X, y = data[0].copy(), data[1].copy()
    X.flags.writeable = False
    y.flags.writeable = False
    det = DETECTORS[name]()
    assert det.fit(X, y) is det
    np.testing.assert_array_equal(X, data[0])
    np.testing.assert_array_equal(y, data[1])
    if "max_epochs" in det.get_params():  # the training-free detectors have no history
        assert len(det.history_) == det.max_epochs
        assert np.isfinite(det.history_[:, "train_loss"]).all()


@parametrize_detectors
def test_decision_function_and_predict_agree(name, fitted, data):
    det, X = fitted[name], data[0]
    scores = det.score_samples(X)
    decision = det.decision_function(X)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    np.testing.assert_allclose(decision, scores - det.offset_)
    pred = det.predict(X)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_array_equal(pred == -1, decision < 0)


@parametrize_detectors
@pytest.mark.parametrize("contamination", [0.1, 0.25])
def test_contamination_flags_that_fraction(name, contamination, data):
    X, y = data
    det = DETECTORS[name](contamination=contamination).fit(X, y)
    flagged = np.mean(det.predict(X) == -1)
    assert abs(flagged - contamination) <= 1.0 / len(X) + 1e-9


@parametrize_detectors
def test_auto_contamination_sets_a_fixed_offset(name, data):
    det = DETECTORS[name](contamination="auto").fit(*data)
    assert np.isfinite(det.offset_)
    np.testing.assert_allclose(det.decision_function(data[0]),
                               det.score_samples(data[0]) - det.offset_)


@parametrize_detectors
def test_pickle_and_joblib_round_trip(name, fitted, data, tmp_path):
    det, X = fitted[name], data[0]
    expected = det.score_samples(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score_samples(X), expected)
    joblib.dump(det, tmp_path / "det.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "det.joblib").score_samples(X),
                                  expected)


@parametrize_detectors
def test_same_random_state_same_scores(name, data):
    X, y = data
    a = DETECTORS[name](random_state=3).fit(X, y).score_samples(X)
    b = DETECTORS[name](random_state=3).fit(X, y).score_samples(X)
    c = DETECTORS[name](random_state=4).fit(X, y).score_samples(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@parametrize_detectors
def test_fit_without_labels(name, data):
    det = DETECTORS[name]().fit(data[0])
    assert np.isfinite(det.score_samples(data[0])).all()


@parametrize_detectors
def test_layouts_and_dtypes_give_consistent_scores(name, fitted, data):
    det, X = fitted[name], data[0]
    expected = det.score_samples(X)
    nchw = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(det.score_samples(nchw), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det.score_samples(X / 255.0), expected, rtol=1e-4, atol=1e-5)
    gray = X[..., 0]
    from_gray = det.score_samples(gray)
    np.testing.assert_allclose(det.score_samples(gray[..., None]), from_gray, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(det.score_samples(np.repeat(gray[..., None], 3, axis=3)),
                               from_gray, rtol=1e-5, atol=1e-6)


@parametrize_detectors
def test_image_paths_are_read_like_arrays(name, fitted, data, tmp_path):
    det, X = fitted[name], data[0]
    paths = []
    for i, img in enumerate(X[:6]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    np.testing.assert_allclose(det.score_samples(paths), det.score_samples(X[:6]),
                               rtol=1e-5, atol=1e-6)


@parametrize_detectors
def test_localize_returns_float32_maps_at_input_size(name, fitted, data):
    det = fitted[name]
    X = data[0][:5, :30, :26]  # not the network's size, not square
    maps = det.localize(X)
    assert maps.dtype == np.float32
    assert maps.shape == (5, 30, 26)
    assert np.isfinite(maps).all()


# A parameter each detector has, for the grid search; the trained detectors share ``lr``.
GRIDS = {
    "BoundaryGuidedDetector": {"beta": [0.05, 0.1]},
    "PatchCoreDetector": {"coreset_ratio": [0.25, 0.5]},
    "PaDiMDetector": {"n_features": [8, 16]},
}


@parametrize_detectors
def test_grid_search_with_roc_auc(name, data):
    X, y = data
    has_lr = "lr" in DETECTORS[name]().get_params()
    param_grid = GRIDS.get(name, {"lr": [1e-4, 1e-3]} if has_lr else
                           {"contamination": [0.1, 0.2]})
    grid = GridSearchCV(
        DETECTORS[name](), param_grid, scoring="roc_auc",
        cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=0), error_score="raise",
    )
    grid.fit(X, y)
    assert np.isfinite(grid.best_score_)
    for param, values in param_grid.items():
        assert grid.best_params_[param] in values


@parametrize_detectors
def test_fit_predict_uses_y(name, data):
    X, y = data
    det = DETECTORS[name](contamination=0.1)
    np.testing.assert_array_equal(det.fit_predict(X, y), clone(det).fit(X, y).predict(X))
    with pytest.raises(ValueError, match="predict's codes"):
        det.fit_predict(X, np.where(y == -1, 0, 1))


# ----------------------------------------------------------------- bad input
@parametrize_detectors
@pytest.mark.parametrize(
    "X, match",
    [
        (np.full((4, 16, 16, 3), np.nan), "NaN or inf"),
        (np.full((4, 16, 16), np.inf), "NaN or inf"),
        (np.zeros((0, 16, 16, 3)), "empty"),
        (np.zeros((2, 2, 16, 16, 3)), "shape"),
        (np.zeros((4, 16, 16, 4)), "1 or 3 channels"),
        (np.full((4, 16, 16), 255.0), r"\[0, 1\]"),
        (np.zeros(16), "dimension"),
    ],
)
def test_bad_images_raise(name, X, match):
    with pytest.raises(ValueError, match=match):
        DETECTORS[name]().fit(X)


@parametrize_detectors
@pytest.mark.parametrize(
    "y, match",
    [
        (np.ones(5, dtype=int), "5 labels but X has 24"),
        (np.r_[np.zeros(4), np.ones(20)].astype(int), r"predict's codes.*np\.where"),
        (np.r_[np.full(4, 2), np.ones(20)].astype(int), "predict's codes"),
        (np.r_[-np.ones(13), np.ones(11)].astype(int), r"more than half.*y=-y"),
        (np.array(["a"] * 24), "predict's codes"),
    ],
)
def test_bad_labels_raise(name, y, match, data):
    with pytest.raises(ValueError, match=match):
        DETECTORS[name]().fit(data[0], y)


@parametrize_detectors
def test_kind_mismatch_at_predict_raises(name, fitted):
    with pytest.raises(ValueError, match="fitted on images"):
        fitted[name].score_samples(np.zeros((3, 5)))


@parametrize_detectors
def test_unavailable_cuda_raises(name, data, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cpu'"):
        DETECTORS[name](device="cuda").fit(*data)


# ------------------------------------------------- scikit-learn's own checks
# Detectors that also take tabular data (DevNet's MLP); image-only ones raise a ValueError.
TABULAR = [make(backbone="efficientnet_lite0", max_epochs=2) for make in DETECTORS.values()
           if make()._accepts_tabular]
TABULAR_IGNORING_Y = [
    ignoring_y(type(est))(**est.get_params()) for est in TABULAR
]


@parametrize_with_checks(TABULAR, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible_on_tabular_data(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


@parametrize_with_checks(TABULAR_IGNORING_Y, expected_failed_checks=lambda est: OUTLIER_CHECKS)
def test_sklearn_checks_pass_apart_from_y_codes(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


@pytest.mark.gpu
@parametrize_detectors
def test_fits_and_scores_on_cuda_and_loads_on_cpu(name, data, tmp_path):
    X, y = data
    det = DETECTORS[name](device="cuda").fit(X, y)
    assert det.device_ == "cuda"
    scores = det.score_samples(X)
    assert np.isfinite(scores).all() and det.localize(X[:2]).shape == (2, 32, 32)
    joblib.dump(det, tmp_path / "gpu.joblib")
    assert np.isfinite(joblib.load(tmp_path / "gpu.joblib").score_samples(X)).all()
