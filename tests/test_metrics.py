"""Tests for skad.metrics."""

import doctest
import pickle
from collections import deque

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

import skad.metrics
from skad.metrics import (
    anomaly_auprc_scorer,
    anomaly_auroc_scorer,
    aupro,
    evaluate,
    image_auprc,
    image_auroc,
    pixel_auroc,
)

# ---------------------------------------------------------------------------
# slow, obviously-correct reference for AUPRO
# ---------------------------------------------------------------------------


def _regions_8_connected(mask):
    """Connected components of a 2-D boolean mask by breadth-first flood fill.

    Two defect pixels are neighbours if they touch by a side or a corner
    (8-connectivity, as in the MVTec AD evaluation code).
    """
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for r in range(height):
        for c in range(width):
            if not mask[r, c] or seen[r, c]:
                continue
            region = []
            queue = deque([(r, c)])
            seen[r, c] = True
            while queue:
                i, j = queue.popleft()
                region.append((i, j))
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        a, b = i + di, j + dj
                        if 0 <= a < height and 0 <= b < width and mask[a, b] and not seen[a, b]:
                            seen[a, b] = True
                            queue.append((a, b))
            regions.append(region)
    return regions


def reference_pro_points(masks, maps, thresholds=None):
    """(FPR, PRO) points from (0, 0), one per threshold (descending), then (1, 1)."""
    masks = np.asarray(masks) > 0
    maps = np.asarray(maps, dtype=np.float64)
    regions = []  # list of (image index, list of pixel coordinates)
    for k in range(masks.shape[0]):
        for region in _regions_8_connected(masks[k]):
            regions.append((k, region))
    normal_values = [
        maps[k, i, j]
        for k in range(masks.shape[0])
        for i in range(masks.shape[1])
        for j in range(masks.shape[2])
        if not masks[k, i, j]
    ]
    if thresholds is None:
        thresholds = sorted(set(maps.ravel().tolist()), reverse=True)
    points = [(0.0, 0.0)]
    for t in thresholds:
        fpr = sum(v >= t for v in normal_values) / len(normal_values)
        overlaps = []
        for k, region in regions:
            detected = sum(maps[k, i, j] >= t for i, j in region)
            overlaps.append(detected / len(region))
        points.append((fpr, sum(overlaps) / len(overlaps)))
    points.append((1.0, 1.0))
    return points


def reference_area(points, max_fpr):
    """Trapezoidal area up to max_fpr (interpolated there), divided by max_fpr."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        assert x1 >= x0
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def reference_aupro(masks, maps, max_fpr=0.3, thresholds=None):
    return reference_area(reference_pro_points(masks, maps, thresholds), max_fpr)


def _random_case(seed, n_images=4, shape=(7, 8), p_defect=0.25, n_levels=None):
    """Masks with several (also diagonally touching) regions, a defect-free image
    and maps correlated with the masks; ``n_levels`` quantises the maps (ties)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n_images, *shape)) < p_defect
    masks[0] = False  # an image without defects
    masks[1, :2, :2] = True  # at least one region
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    if n_levels is not None:
        maps = np.round((maps - maps.min()) / np.ptp(maps) * (n_levels - 1))
    return masks, maps


# ---------------------------------------------------------------------------
# AUPRO against the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_levels", [None, 4, 12])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 0.6, 1.0])
def test_aupro_matches_reference(seed, n_levels, max_fpr):
    masks, maps = _random_case(seed, n_levels=n_levels)
    expected = reference_aupro(masks, maps, max_fpr=max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_reference_larger_float32(seed):
    # float32 maps with ties (as returned by ``localize``), a few hundred levels
    masks, maps = _random_case(seed, n_images=3, shape=(20, 20), p_defect=0.08, n_levels=300)
    maps = (maps / 7.0).astype(np.float32)
    expected = reference_aupro(masks, maps)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("num_thresholds", [2, 5, 40])
def test_aupro_num_thresholds_matches_reference_grid(seed, num_thresholds):
    masks, maps = _random_case(seed, n_levels=None)
    grid = np.linspace(maps.max(), maps.min(), num_thresholds)
    expected = reference_aupro(masks, maps, thresholds=grid)
    got = aupro(masks, maps, num_thresholds=num_thresholds)
    assert got == pytest.approx(expected, abs=1e-9)


def test_aupro_num_thresholds_converges_to_exact():
    masks, maps = _random_case(0, n_images=6, shape=(30, 30), p_defect=0.1)
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=5000) == pytest.approx(exact, abs=2e-3)


def test_reference_sanity():
    # the reference itself on the hand-computed case of the docstring
    masks = np.array([[[1, 1, 0], [0, 0, 0]]])
    maps = np.array([[[0.9, 0.4, 0.8], [0.3, 0.2, 0.1]]])
    assert reference_aupro(masks, maps, max_fpr=0.5) == pytest.approx(0.75)
    assert len(_regions_8_connected(np.eye(3, dtype=bool))) == 1
    assert len(_regions_8_connected(np.array([[1, 0, 1]], dtype=bool))) == 2


# ---------------------------------------------------------------------------
# known values
# ---------------------------------------------------------------------------


def test_perfect_maps():
    masks, _ = _random_case(1)
    rng = np.random.default_rng(0)
    maps = np.where(masks, rng.uniform(0.6, 1.0, masks.shape), rng.uniform(0, 0.4, masks.shape))
    for m in (masks.astype(float), maps):
        assert aupro(masks, m) == 1.0
        assert aupro(masks, m, max_fpr=0.01) == 1.0
        assert pixel_auroc(masks, m) == 1.0
    assert pixel_auroc(masks, -maps) == 0.0
    assert aupro(masks, -maps) == 0.0


@pytest.mark.parametrize("max_fpr", [0.3, 0.1, 1.0])
def test_constant_map(max_fpr):
    masks, _ = _random_case(2)
    constant = np.full(masks.shape, 3.5)
    # a single threshold: the curve is the diagonal from (0, 0) to (1, 1)
    assert aupro(masks, constant, max_fpr=max_fpr) == pytest.approx(max_fpr / 2)
    assert pixel_auroc(masks, constant) == 0.5
    y = np.array([-1, 1, 1, 1, -1, 1])
    assert image_auroc(y, np.zeros(6)) == 0.5
    assert image_auprc(y, np.zeros(6)) == pytest.approx(2 / 6)


def test_one_region_by_hand():
    # region pixels score 0.9 and 0.4; normal pixels 0.8, 0.3, 0.2, 0.1.
    # curve: (0,0) -> (0,.5) [t=.9] -> (.25,.5) [t=.8] -> (.25,1) [t=.4] -> (.5,1) ...
    masks = np.array([[[1, 1, 0], [0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.4, 0.8], [0.3, 0.2, 0.1]]])
    # up to 0.3: 0.25 * 0.5 + 0.05 * 1 = 0.175 -> / 0.3 = 7/12
    assert aupro(masks, maps) == pytest.approx(7 / 12)
    assert aupro(masks, maps, max_fpr=0.5) == pytest.approx(0.75)
    # up to 0.1: 0.1 * 0.5 -> / 0.1
    assert aupro(masks, maps, max_fpr=0.1) == pytest.approx(0.5)
    # positives beat 4 + 3 of the 4 normal pixels
    assert pixel_auroc(masks, maps) == pytest.approx(7 / 8)


def test_pro_averages_over_regions_not_pixels():
    # image 0: a 1-pixel region, fully detected; image 1: a 3-pixel region, one
    # pixel detected -> PRO = (1 + 1/3) / 2 at threshold 1 (pixel recall is 1/2)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1, 1] = True
    masks[1, 0, :3] = True
    maps = np.full(masks.shape, 0.5)
    maps[0, 1, 1] = 1.0
    maps[1, 0] = [1.0, 0.0, 0.0, 0.5]
    assert aupro(masks, maps) == pytest.approx(2 / 3)


def test_regions_use_8_connectivity():
    # (0,0),(0,1) and (1,2) touch only diagonally: one region of 3 pixels with
    # 8-connectivity (PRO = 1/3 when only (1,2) is detected), two regions with
    # 4-connectivity (PRO would be (0 + 1) / 2)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, :2] = True
    masks[0, 1, 2] = True
    maps = np.full(masks.shape, 0.5)
    maps[0, 1, 2] = 0.9
    maps[0, 0, :2] = 0.2
    assert aupro(masks, maps) == pytest.approx(1 / 3)
    assert reference_aupro(masks, maps) == pytest.approx(1 / 3)


def test_ties_between_defect_and_normal_pixels_give_diagonal():
    # every pixel ties: straight line (0,0) -> (1,1), also with several images
    masks = np.zeros((3, 2, 2))
    masks[1, 0, 0] = 1.0
    assert aupro(masks, np.ones((3, 2, 2)), max_fpr=0.5) == pytest.approx(0.25)


def test_masks_numeric_and_bool_agree():
    masks, maps = _random_case(3)
    as_uint8 = masks.astype(np.uint8) * 255
    assert aupro(as_uint8, maps) == aupro(masks, maps)
    assert pixel_auroc(as_uint8, maps) == pixel_auroc(masks, maps)
    # list input
    assert aupro(masks.tolist(), maps.tolist()) == aupro(masks, maps)


def test_inputs_not_modified():
    masks, maps = _random_case(4)
    masks_copy, maps_copy = masks.copy(), maps.copy()
    aupro(masks, maps)
    pixel_auroc(masks, maps)
    np.testing.assert_array_equal(masks, masks_copy)
    np.testing.assert_array_equal(maps, maps_copy)


# ---------------------------------------------------------------------------
# agreement with scikit-learn
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prevalence", [0.1, 0.5, 0.9])
def test_image_metrics_match_sklearn(seed, prevalence):
    rng = np.random.default_rng(seed)
    is_anomaly = rng.random(60) < prevalence
    is_anomaly[:2] = [True, False]
    scores = rng.integers(0, 10, 60) + is_anomaly  # many ties
    y = np.where(is_anomaly, -1, 1)
    assert image_auroc(y, scores) == pytest.approx(roc_auc_score(is_anomaly, scores), abs=1e-12)
    assert image_auprc(y, scores) == pytest.approx(
        average_precision_score(is_anomaly, scores), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p_defect", [0.1, 0.7])
def test_pixel_auroc_matches_sklearn(seed, p_defect):
    masks, maps = _random_case(seed, p_defect=p_defect, n_levels=6)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------
# properties (hypothesis)
# ---------------------------------------------------------------------------

TRANSFORMS = [np.exp, lambda x: 0.5 * x - 7.0, lambda x: x**3, lambda x: 3.0 * x + 1.0]


@st.composite
def image_case(draw):
    n = draw(st.integers(2, 30))
    is_anomaly = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assume(is_anomaly.any() and not is_anomaly.all())
    scores = np.array(draw(st.lists(st.integers(-4, 4), min_size=n, max_size=n)), float)
    return is_anomaly, scores


@st.composite
def pixel_case(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(2, 5)))
    masks = draw(hnp.arrays(bool, shape))
    assume(masks.any() and not masks.all())
    maps = draw(hnp.arrays(np.float64, shape, elements=st.integers(-4, 4).map(float)))
    return masks, maps


@settings(max_examples=50, deadline=None)
@given(case=image_case(), transform=st.sampled_from(TRANSFORMS))
def test_image_metrics_properties(case, transform):
    is_anomaly, scores = case
    y = np.where(is_anomaly, -1, 1)
    auroc, auprc = image_auroc(y, scores), image_auprc(y, scores)
    # strictly increasing transforms keep both metrics
    assert image_auroc(y, transform(scores)) == pytest.approx(auroc, abs=1e-12)
    assert image_auprc(y, transform(scores)) == pytest.approx(auprc, abs=1e-12)
    # reversing the scores mirrors the AUROC (ties count 1/2 both ways)
    assert image_auroc(y, -scores) == pytest.approx(1.0 - auroc, abs=1e-12)
    # both label encodings agree
    assert image_auroc(is_anomaly, scores) == auroc
    assert image_auprc(is_anomaly, scores) == auprc
    assert 0.0 <= auroc <= 1.0 and 0.0 < auprc <= 1.0


@settings(max_examples=50, deadline=None)
@given(
    case=pixel_case(),
    transform=st.sampled_from(TRANSFORMS),
    max_fpr=st.sampled_from([0.3, 0.05, 0.5, 1.0]),
)
def test_pixel_metrics_properties(case, transform, max_fpr):
    masks, maps = case
    auroc = pixel_auroc(masks, maps)
    pro = aupro(masks, maps, max_fpr=max_fpr)
    assert pixel_auroc(masks, transform(maps)) == pytest.approx(auroc, abs=1e-12)
    assert aupro(masks, transform(maps), max_fpr=max_fpr) == pytest.approx(pro, abs=1e-12)
    assert pixel_auroc(masks, -maps) == pytest.approx(1.0 - auroc, abs=1e-12)
    assert pro == pytest.approx(reference_aupro(masks, maps, max_fpr=max_fpr), abs=1e-9)
    assert 0.0 <= pro <= 1.0


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y",
    [np.array([0, 1, 1, 0]), np.array([1, 2, 2, 1]), np.array(["a", "b", "b", "a"])],
)
def test_wrong_label_codes(y):
    with pytest.raises(ValueError, match="-1 = anomaly") as exc_info:
        image_auroc(y, [0.1, 0.2, 0.3, 0.4])
    message = str(exc_info.value)
    assert "True = anomaly" in message and "is_anomaly" in message
    assert "ambiguous" in message
    with pytest.raises(ValueError, match="ambiguous"):
        image_auprc(y, [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("y", [[-1, -1, -1], [1, 1, 1], [True, True, True], [False] * 3])
def test_single_class(y):
    with pytest.raises(ValueError, match="Only one class"):
        image_auroc(y, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="Only one class"):
        image_auprc(y, [0.1, 0.2, 0.3])


def test_image_shape_and_value_errors():
    y = [-1, 1, 1]
    with pytest.raises(ValueError, match="inconsistent lengths"):
        image_auroc(y, [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        image_auprc(y, [[0.1], [0.2], [0.3]])
    with pytest.raises(ValueError, match="1-D"):
        image_auroc([[-1, 1]], [0.1, 0.2])
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or infinity"):
            image_auroc(y, [0.1, bad, 0.3])
        with pytest.raises(ValueError, match="NaN or infinity"):
            image_auprc(y, [0.1, bad, 0.3])


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
def test_pixel_errors(metric):
    masks, maps = _random_case(0)
    with pytest.raises(ValueError, match="same shape"):
        metric(masks, maps[:, :, :-1])
    with pytest.raises(ValueError, match=r"\(n_images, height, width\)"):
        metric(masks[0], maps[0])
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="maps contains NaN"):
        metric(masks, bad)
    with pytest.raises(ValueError, match="no defect pixel|Only one class"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="no normal pixel|Only one class"):
        metric(np.ones_like(masks), maps)


@pytest.mark.parametrize("max_fpr", [0, -0.1, 1.5, "0.3", True])
def test_aupro_invalid_max_fpr(max_fpr):
    masks, maps = _random_case(0)
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(masks, maps, max_fpr=max_fpr)


@pytest.mark.parametrize("num_thresholds", [1, 0, 2.5, True])
def test_aupro_invalid_num_thresholds(num_thresholds):
    masks, maps = _random_case(0)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(masks, maps, num_thresholds=num_thresholds)


# ---------------------------------------------------------------------------
# evaluate and the scorer
# ---------------------------------------------------------------------------


class FakeDetector:
    """Scores images by their mean intensity; the image itself is the map."""

    def __init__(self):
        self.n_localize_calls = 0

    def score_samples(self, X):
        return -np.asarray(X, dtype=np.float64).mean(axis=(1, 2))

    def localize(self, X):
        self.n_localize_calls += 1
        return np.asarray(X, dtype=np.float32)


def test_evaluate():
    masks, maps = _random_case(5, n_images=6)
    X = maps.astype(np.float32)
    y = np.where(masks.any(axis=(1, 2)), -1, 1)
    detector = FakeDetector()
    result = evaluate(detector, X, y, masks=masks)
    assert isinstance(result, pd.Series)
    assert result.name == "FakeDetector"
    assert list(result.index) == ["image_auroc", "image_auprc", "pixel_auroc", "aupro"]
    assert result.dtype == np.float64
    assert detector.n_localize_calls == 1
    scores = X.mean(axis=(1, 2))
    assert result["image_auroc"] == pytest.approx(image_auroc(y, scores))
    assert result["image_auprc"] == pytest.approx(image_auprc(y, scores))
    assert result["pixel_auroc"] == pixel_auroc(masks, X)
    assert result["aupro"] == aupro(masks, X)
    assert evaluate(detector, X, y, masks=masks, max_fpr=0.1)["aupro"] == aupro(
        masks, X, max_fpr=0.1
    )

    image_only = evaluate(FakeDetector(), X, y)
    assert list(image_only.index) == ["image_auroc", "image_auprc"]
    pd.testing.assert_series_equal(image_only, result[["image_auroc", "image_auprc"]])


def _tabular_data():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(120, 2))
    anomalies = rng.uniform(-5, 5, size=(30, 2))
    X = np.vstack([normal, anomalies])
    y = np.r_[np.ones(120, dtype=int), -np.ones(30, dtype=int)]
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


def test_anomaly_auprc_scorer_in_grid_search():
    X_train, X_test, y_train, y_test = _tabular_data()
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    grid = GridSearchCV(
        IsolationForest(n_estimators=15, random_state=0),
        param_grid={"max_samples": [8, 32]},
        scoring=anomaly_auprc_scorer,
        cv=cv,
    ).fit(X_train, y_train)
    est = grid.best_estimator_
    expected = image_auprc(y_test, -est.score_samples(X_test))
    assert anomaly_auprc_scorer(est, X_test, y_test) == pytest.approx(expected, abs=1e-12)
    assert grid.score(X_test, y_test) == pytest.approx(expected, abs=1e-12)
    # higher is better and better than chance (prevalence 0.2)
    assert expected > 0.5

    # cross-validation scores are the anomaly-class AUPRC on each test fold
    for i, params in enumerate(grid.cv_results_["params"]):
        for k, (train, test) in enumerate(cv.split(X_train, y_train)):
            fold_est = clone(grid.estimator).set_params(**params).fit(X_train[train])
            fold_expected = image_auprc(y_train[test], -fold_est.score_samples(X_train[test]))
            got = grid.cv_results_[f"split{k}_test_score"][i]
            assert got == pytest.approx(fold_expected, abs=1e-12)


def test_anomaly_auprc_scorer_accepts_boolean_labels():
    X_train, X_test, y_train, y_test = _tabular_data()
    est = IsolationForest(n_estimators=10, random_state=0).fit(X_train)
    assert anomaly_auprc_scorer(est, X_test, y_test == -1) == anomaly_auprc_scorer(
        est, X_test, y_test
    )


def test_anomaly_auprc_scorer_is_picklable():
    X_train, X_test, y_train, y_test = _tabular_data()
    est = IsolationForest(n_estimators=10, random_state=0).fit(X_train)
    scorer = pickle.loads(pickle.dumps(anomaly_auprc_scorer))
    assert scorer(est, X_test, y_test) == anomaly_auprc_scorer(est, X_test, y_test)


def test_label_containers():
    scores = [0.9, 0.1, 0.4, 0.35]
    expected = image_auroc(np.array([-1, 1, 1, -1]), scores)
    for y in (
        [-1, 1, 1, -1],
        [-1.0, 1.0, 1.0, -1.0],
        np.array([-1, 1, 1, -1], dtype=object),
        pd.Series([-1, 1, 1, -1]),
        pd.Series([True, False, False, True]),
    ):
        assert image_auroc(y, scores) == expected
        assert image_auprc(y, pd.Series(scores)) == image_auprc([-1, 1, 1, -1], scores)


def test_docstring_examples():
    result = doctest.testmod(skad.metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_anomaly_auroc_scorer_is_roc_auc_of_the_anomaly_class():
    from sklearn.metrics import get_scorer

    X_train, X_test, y_train, y_test = _tabular_data()
    est = IsolationForest(n_estimators=10, random_state=0).fit(X_train)
    assert anomaly_auroc_scorer(est, X_test, y_test) == pytest.approx(
        get_scorer("roc_auc")(est, X_test, y_test))


@pytest.mark.parametrize("scorer", ["anomaly_auprc_scorer", "anomaly_auroc_scorer"])
def test_scorers_on_a_one_class_fold_warn_naming_the_splitter(scorer):
    from sklearn.exceptions import UndefinedMetricWarning

    X_train, X_test, _, _ = _tabular_data()
    est = IsolationForest(n_estimators=10, random_state=0).fit(X_train)
    with pytest.warns(UndefinedMetricWarning, match=r"has no anomaly \(-1\).*"
                                                    r"LabelledAnomalyKFold"):
        assert np.isnan(getattr(skad.metrics, scorer)(est, X_test, np.ones(len(X_test))))
    with pytest.warns(UndefinedMetricWarning, match="no normal image"):
        assert np.isnan(getattr(skad.metrics, scorer)(est, X_test, -np.ones(len(X_test))))
