"""skad.thresholds: false-alarm budgets, F1-optimal thresholds, normalised scores."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import betabinom, norm
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import f1_score, precision_recall_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skad._registry import DETECTORS, detector_class
from skad.thresholds import calibrate, false_alarm_upper_bound, score_normalized


class FirstColumn(OutlierMixin, BaseEstimator):
    """Anomaly score = first column: a transparent detector with the outlier contract."""

    def fit(self, X, y=None):
        self.offset_ = 0.0
        return self

    def score_samples(self, X):
        return -np.asarray(X, dtype=np.float64)[:, 0]

    def decision_function(self, X):
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        return np.where(self.decision_function(X) < 0, -1, 1)


def _column(values):
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def _best_f1(is_anomaly, scores):
    precision, recall, _ = precision_recall_curve(is_anomaly, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return float(f1.max())


# ------------------------------------------------------------------ false-alarm budget
def test_max_fpr_threshold_is_the_order_statistic_of_the_notes():
    scores = np.arange(1.0, 100.0)  # 99 normal images, anomaly scores 1..99
    det = calibrate(FirstColumn().fit(None), _column(scores), max_fpr=0.05)
    k = math.floor(0.05 * 100) - 1  # 4 allowed false alarms
    assert det.calibration_["threshold"] == 99.0 - k
    assert det.offset_ == -(99.0 - k)
    assert det.calibration_["false_alarms"] == k == int((det.predict(_column(scores)) == -1).sum())
    assert det.calibration_["expected_false_alarm_rate"] == pytest.approx(5 / 100)
    assert det.calibration_["false_alarm_rate_upper"] == pytest.approx(
        false_alarm_upper_bound(4, 99))
    assert det.calibration_["method"] == "max_fpr" and det.calibration_["n_normal"] == 99


def test_default_is_one_percent_and_labelled_rows_use_only_the_normals():
    rng = np.random.RandomState(0)
    X = _column(np.r_[rng.normal(size=499), rng.normal(5, 1, size=50)])
    y = np.r_[np.ones(499), -np.ones(50)].astype(int)
    det = calibrate(FirstColumn().fit(None), X, y)
    info = det.calibration_
    assert info["max_fpr"] == 0.01 and info["n_normal"] == 499 and info["n_anomalous"] == 50
    assert info["false_alarms"] == 4  # floor(0.01 * 500) - 1
    assert info["detection_rate"] > 0.9 and 0 < info["f1"] <= 1


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 400), max_fpr=st.floats(0.001, 0.5), seed=st.integers(0, 2**31 - 1))
def test_calibration_images_flagged_never_exceed_the_budget(n, max_fpr, seed):
    scores = np.random.RandomState(seed).standard_normal(n)
    allowed = math.floor(max_fpr * (n + 1) + 1e-9) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # too few images for tiny budgets
        det = calibrate(FirstColumn().fit(None), _column(scores), max_fpr=max_fpr)
    flagged = int((det.predict(_column(scores)) == -1).sum())
    assert flagged == det.calibration_["false_alarms"] == max(allowed, 0)


def test_expected_false_alarm_rate_on_new_normals_is_the_conformal_bound():
    # N(0, 1) anomaly scores: a threshold t flags new normals at rate 1 - Phi(t), exactly
    rng = np.random.RandomState(0)
    n, max_fpr, trials = 59, 0.05, 4000
    rates, covered = [], []
    for _ in range(trials):
        det = calibrate(FirstColumn().fit(None), _column(rng.standard_normal(n)),
                        max_fpr=max_fpr)
        rate = norm.sf(det.calibration_["threshold"])
        rates.append(rate)
        covered.append(rate <= det.calibration_["false_alarm_rate_upper"])
    k = math.floor(max_fpr * (n + 1)) - 1
    expected = (k + 1) / (n + 1)  # 0.05, the budget
    assert abs(np.mean(rates) - expected) < 4 * np.std(rates) / math.sqrt(trials)
    assert np.mean(rates) <= max_fpr + 4 * np.std(rates) / math.sqrt(trials)
    assert 0.94 <= np.mean(covered) <= 0.96  # the Clopper-Pearson bound is exact here


def test_too_few_normal_images_warn_and_use_the_highest_score():
    with pytest.warns(UserWarning, match=r"too few for max_fpr=0.01.*at least 99"):
        det = calibrate(FirstColumn().fit(None), _column([1.0, 3.0, 2.0]), max_fpr=0.01)
    assert det.calibration_["threshold"] == 3.0 and det.calibration_["false_alarms"] == 0


def test_false_alarm_upper_bound_closed_forms():
    assert false_alarm_upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert false_alarm_upper_bound(5, 5) == 1.0
    assert false_alarm_upper_bound(3, 100, confidence=0.99) > false_alarm_upper_bound(3, 100)
    with pytest.raises(ValueError, match="exceeds n_images"):
        false_alarm_upper_bound(6, 5)


# ---------------------------------------------------------------------------- F1
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=2, max_size=60))
def test_f1_threshold_reaches_the_best_f1_over_all_thresholds(pairs):
    scores = np.array([s for s, _ in pairs], dtype=np.float64)  # integers: many ties
    is_anomaly = np.array([a for _, a in pairs])
    if is_anomaly.all() or not is_anomaly.any():
        return
    det = calibrate(FirstColumn().fit(None), _column(scores), np.where(is_anomaly, -1, 1),
                    metric="f1")
    achieved = f1_score(is_anomaly, det.predict(_column(scores)) == -1)
    assert achieved == pytest.approx(_best_f1(is_anomaly, scores))
    assert det.calibration_["f1"] == pytest.approx(achieved)
    # the threshold sits strictly between two observed scores (or below all of them)
    assert not np.isin(det.calibration_["threshold"], scores)


def test_f1_accepts_boolean_labels_and_reports_detection():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    det = calibrate(FirstColumn().fit(None), _column(scores),
                    np.array([False, False, False, True, True]), metric="f1")
    assert det.calibration_["threshold"] == pytest.approx(0.6)
    assert det.calibration_["detection_rate"] == 1.0 and det.calibration_["false_alarms"] == 0


# -------------------------------------------------------------------------- errors
def test_errors_name_the_argument_and_the_fix():
    det = FirstColumn().fit(None)
    X = _column([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="pass one of them"):
        calibrate(det, X, [1, 1, -1], max_fpr=0.1, metric="f1")
    with pytest.raises(ValueError, match="metric='f1' needs labels"):
        calibrate(det, X, metric="f1")
    with pytest.raises(ValueError, match="needs anomalies.*max_fpr=0.01"):
        calibrate(det, X, [1, 1, 1], metric="f1")
    with pytest.raises(ValueError, match="no normal image"):
        calibrate(det, X, [-1, -1, -1])
    with pytest.raises(ValueError, match="2 labels but X has 3"):
        calibrate(det, X, [1, 1])
    with pytest.raises(ValueError, match="max_fpr"):
        calibrate(det, X, max_fpr=1.5)
    with pytest.raises(ValueError, match="metric"):
        calibrate(det, X, [1, 1, -1], metric="auroc")
    with pytest.raises(NotFittedError):
        calibrate(FirstColumn(), X)


# ---------------------------------------------------------------- normalised scores
def test_score_normalized_is_monotone_and_half_at_the_threshold():
    rng = np.random.RandomState(0)
    det = IsolationForest(random_state=0).fit(rng.normal(size=(200, 2)))
    calibrate(det, rng.normal(size=(300, 2)), max_fpr=0.05)
    X = np.r_[rng.normal(size=(300, 2)), rng.normal(4, 1, size=(30, 2))]
    p = score_normalized(det, X)
    assert ((0 <= p) & (p <= 1)).all()
    order = np.argsort(-det.score_samples(X))
    assert (np.diff(p[order]) >= 0).all()
    np.testing.assert_array_equal(p > 0.5, det.predict(X) == -1)
    assert np.median(score_normalized(det, rng.normal(size=(2000, 2)))) == pytest.approx(
        0.1, abs=0.05)  # a typical normal image


def test_score_normalized_needs_a_current_calibration():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(50, 2))
    det = IsolationForest(random_state=0).fit(X)
    with pytest.raises(NotFittedError, match="not calibrated.*calibrate"):
        score_normalized(det, X)
    calibrate(det, X, max_fpr=0.1)
    det.fit(X)  # refitting resets offset_
    with pytest.raises(NotFittedError, match="refitted since calibrate"):
        score_normalized(det, X)


def test_calibrate_and_normalise_through_a_pipeline():
    rng = np.random.RandomState(0)
    X = _column(rng.standard_normal(199))
    pipe = make_pipeline(FunctionTransformer(lambda X: 2 * X), FirstColumn()).fit(X)
    assert calibrate(pipe, X, max_fpr=0.05) is pipe
    detector = pipe[-1]
    # the transformer doubled the scores before the threshold was taken
    assert detector.calibration_["threshold"] == np.sort(2 * X[:, 0])[::-1][9]
    np.testing.assert_array_equal(score_normalized(pipe, X) > 0.5, pipe.predict(X) == -1)


# ------------------------------------------------- acceptance: every skad detector
TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            steps_per_epoch=4, batch_size=8, device="cpu", random_state=0, n_reference=500,
            fuse_channels=8, coreset_ratio=0.5, n_features=16)


@pytest.fixture(scope="module")
def inspection_set(tmp_path_factory):
    """An MVTec-style folder written as PNGs and read back with ``load_mvtec``: textures with
    drawn defects; ``train/good`` 5% contaminated (4 unnoticed defects among 84 parts), 4
    labelled defects, 99 held-out good parts for calibration, 120 new good parts and a
    labelled validation set (40 good, 36 defects)."""
    from PIL import Image

    from skad.datasets import load_mvtec, make_defect_images

    good = make_defect_images(339, image_size=32, anomaly_ratio=0.0, random_state=1)
    bad = make_defect_images(44, image_size=32, anomaly_ratio=1.0, random_state=2)
    category = tmp_path_factory.mktemp("inspection") / "brick"
    folders = {"train/good": np.r_[good.images[:80], bad.images[4:8]],
               "test/good": good.images[80:], "test/crack": bad.images[np.r_[:4, 8:44]]}
    for folder, images in folders.items():
        (category / folder).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(category / folder / f"{i:03d}.png")
    (category / "ground_truth/crack").mkdir(parents=True)
    for i, mask in enumerate(bad.masks[np.r_[:4, 8:44]]):
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            category / f"ground_truth/crack/{i:03d}_mask.png")

    train = load_mvtec(category.parent, "brick", split="train", return_arrays=True)
    test = load_mvtec(category.parent, "brick", split="test", return_arrays=True)
    np.testing.assert_array_equal(train.images, folders["train/good"])  # PNG is lossless
    test_good, test_bad = test.images[test.target == 1], test.images[test.target == -1]
    X_train = np.r_[train.images, test_bad[:4]]  # the user's 4 known defects, labelled
    y_train = np.r_[train.target, -np.ones(4, dtype=int)]
    X_val = np.r_[test_good[219:], test_bad[4:]]
    y_val = np.r_[np.ones(40), -np.ones(36)].astype(int)
    return dict(train=(X_train, y_train), calibration=test_good[:99], new=test_good[99:219],
                val=(X_val, y_val))


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_meets_the_budget_and_the_best_f1(name, inspection_set):
    cls = detector_class(name)
    params = cls().get_params()
    det = cls(**{k: v for k, v in TINY.items() if k in params}).fit(*inspection_set["train"])

    calibrate(det, inspection_set["calibration"], max_fpr=0.05)
    n, m = len(inspection_set["calibration"]), len(inspection_set["new"])
    k = math.floor(0.05 * (n + 1)) - 1
    flagged = int((det.predict(inspection_set["new"]) == -1).sum())
    # binomial slack: the flagged count of m new parts is Beta-binomial(m, k + 1, n - k)
    assert flagged <= betabinom.ppf(0.999, m, k + 1, n - k), (flagged, m)
    assert det.calibration_["false_alarms"] <= k

    X_val, y_val = inspection_set["val"]
    calibrate(det, X_val, y_val, metric="f1")
    is_anomaly = y_val == -1
    best = _best_f1(is_anomaly, -det.score_samples(X_val))
    assert f1_score(is_anomaly, det.predict(X_val) == -1) >= best - 0.02


def test_a_calibrated_detector_saves_and_loads_without_pickle(tmp_path):
    from _helpers import make_tiny_images

    from skad import PaDiMDetector
    from skad.persistence import load, save

    X, is_anomaly, _ = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    det = PaDiMDetector(backbone="test_efficientnet", pretrained=False, image_size=32,
                        n_features=8, device="cpu", random_state=0)
    det.fit(X, np.where(is_anomaly, -1, 1))
    calibrate(det, X[:20], max_fpr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no value stored as pickle
        save(det, tmp_path / "calibrated.skad")
    loaded = load(tmp_path / "calibrated.skad")
    assert loaded.calibration_.keys() == det.calibration_.keys()
    for key, value in det.calibration_.items():  # NaN where there was no anomaly
        assert loaded.calibration_[key] == value or (value != value and
                                                     loaded.calibration_[key] != value), key
    np.testing.assert_array_equal(score_normalized(loaded, X), score_normalized(det, X))
