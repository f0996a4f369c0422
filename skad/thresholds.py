"""Thresholds from held-out data: a false-alarm budget, or the F1-optimal threshold.

A fitted detector flags an image when ``score_samples(X) < offset_``; how
``fit`` sets ``offset_`` is its ``contamination`` (a share of the training
data, or each method's own ``"auto"`` rule). On a production line the
threshold is better set on images the detector has not been fitted on:

- :func:`calibrate` with ``max_fpr`` sets ``offset_`` from held-out *normal*
  images, so that at most that share of new normal images is flagged (in
  expectation; Notes give the confidence of the achieved rate);
- :func:`calibrate` with ``metric="f1"`` picks the threshold of best F1 on a
  labelled validation set (the idea of anomalib's ``F1AdaptiveThreshold``);
- :func:`score_normalized` maps the anomaly score to [0, 1] around the
  calibrated threshold (0.5 at the threshold), for display and reports.

Both take a detector or a :class:`~sklearn.pipeline.Pipeline` ending in one;
any estimator with scikit-learn's outlier contract (``score_samples``,
``offset_``), e.g. :class:`~sklearn.ensemble.IsolationForest`, works too.
"""

import math
import warnings
from numbers import Real

import numpy as np
from scipy.stats import beta
from sklearn.metrics import precision_recall_curve
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.validation import check_is_fitted

from ._labels import is_anomaly_from_labels
from .pipeline import final_detector

__all__ = ["calibrate", "false_alarm_upper_bound", "score_normalized"]

#: ``max_fpr`` when neither ``max_fpr`` nor ``metric`` is given.
DEFAULT_MAX_FPR = 0.01

#: A typical normal image (the calibration normals' median) sits at this normalised score.
_TYPICAL_NORMAL = 0.1


@validate_params(
    {
        "n_false_alarms": [Interval(Real, 0, None, closed="left")],
        "n_images": [Interval(Real, 1, None, closed="left")],
        "confidence": [Interval(Real, 0, 1, closed="neither")],
    },
    prefer_skip_nested_validation=True,
)
def false_alarm_upper_bound(n_false_alarms, n_images, *, confidence=0.95):
    """One-sided Clopper-Pearson upper bound of a false-alarm rate.

    With ``k`` of ``n`` normal images flagged, the true rate is below the
    returned bound with probability ``confidence``: the ``confidence``
    quantile of ``Beta(k + 1, n - k)`` (1 when ``k == n``).

    Parameters
    ----------
    n_false_alarms : int
        Normal images flagged, ``k``.
    n_images : int
        Normal images, ``n >= k``.
    confidence : float in (0, 1), default=0.95
        One-sided confidence level.

    Returns
    -------
    bound : float
        Upper confidence bound of the rate, in (0, 1].

    Examples
    --------
    >>> from skad.thresholds import false_alarm_upper_bound
    >>> round(false_alarm_upper_bound(0, 100), 4)  # the "rule of three": about 3 / n
    0.0295
    """
    k, n = int(n_false_alarms), int(n_images)
    if k > n:
        raise ValueError(
            f"n_false_alarms={k} exceeds n_images={n}; at most every image can be flagged."
        )
    if k == n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def _anomaly_scores(estimator, X):
    scores = -np.asarray(estimator.score_samples(X), dtype=np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        raise ValueError("the detector's scores of X contain NaN or inf; pass valid images.")
    return scores


def _normal_scale(threshold, normal_scores):
    """Scale of :func:`score_normalized`: the median normal score maps to ``_TYPICAL_NORMAL``."""
    logit = math.log((1.0 - _TYPICAL_NORMAL) / _TYPICAL_NORMAL)
    spread = threshold - float(np.median(normal_scores))
    if not spread > 0:  # a threshold below the typical normal image: use the normals' spread
        q1, q3 = np.percentile(normal_scores, [25.0, 75.0])
        spread = float(q3 - q1) * logit / 1.349 if q3 > q1 else 0.0
    return max(spread / logit, 1e-12 * max(abs(threshold), 1.0))


def _max_fpr_threshold(normal_scores, max_fpr):
    """``(threshold, allowed)``: the ``allowed + 1``-th largest score, ``allowed`` as in Notes."""
    n = len(normal_scores)
    allowed = math.floor(max_fpr * (n + 1) + 1e-9) - 1
    if allowed < 0:
        warnings.warn(
            f"calibrate got {n} normal images, too few for max_fpr={max_fpr}: the threshold "
            f"is their highest score, whose expected false-alarm rate is 1/(n+1) = "
            f"{1 / (n + 1):.3g}. Pass at least {math.ceil(1 / max_fpr) - 1} normal images.",
            UserWarning, stacklevel=3,
        )
        allowed = 0
    ordered = np.sort(normal_scores)[::-1]
    return float(ordered[min(allowed, n - 1)]), allowed


def _f1_threshold(is_anomaly, scores):
    """Threshold ``t`` of best F1 for the rule ``score > t``, midway between two scores."""
    precision, recall, cuts = precision_recall_curve(is_anomaly, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = f1[:-1]  # the last point (recall 0) has no threshold
    best = int(np.flatnonzero(f1 == f1.max())[-1])  # the highest of the best cuts
    cut = cuts[best]  # precision_recall_curve flags score >= cut
    below = scores[scores < cut]
    threshold = (cut + below.max()) / 2 if len(below) else np.nextafter(cut, -np.inf)
    return float(threshold), float(f1[best])


@validate_params(
    {
        "detector": "no_validation",
        "X": "no_validation",
        "y": ["array-like", None],
        "max_fpr": [Interval(Real, 0, 1, closed="neither"), None],
        "metric": [StrOptions({"f1"}), None],
    },
    prefer_skip_nested_validation=True,
)
def calibrate(detector, X, y=None, *, max_fpr=None, metric=None):
    """Set a fitted detector's threshold (``offset_``) from held-out images.

    Two rules, chosen by the arguments:

    - **a false-alarm budget** (``max_fpr``, the default): ``X`` holds
      normal images the detector was not fitted on (all of ``X`` when ``y``
      is None, else its ``y == +1`` rows); ``offset_`` is set so that the
      expected share of *new* normal images flagged is at most ``max_fpr``;
    - **best F1** (``metric="f1"``): ``X, y`` is a labelled validation set
      (``y = -1`` anomaly, ``+1`` normal); ``offset_`` is the threshold of
      highest F1 of the anomaly class on it, halfway between the two scores
      it separates.

    Parameters
    ----------
    detector : fitted detector or Pipeline
        A skad detector, a :class:`~sklearn.pipeline.Pipeline` whose last
        step is one (its transformers are applied to ``X`` first), or any
        estimator with scikit-learn's outlier contract (``score_samples``
        higher = more normal, ``offset_``). Modified in place.
    X : array-like or sequence of image paths
        Held-out images, of the kind the detector was fitted on.
    y : array-like of shape (n,), default=None
        ``-1`` anomaly, ``+1`` normal (or booleans, True = anomaly). Needed
        by ``metric="f1"``; with ``max_fpr`` only the normal rows are used.
    max_fpr : float in (0, 1), default=None
        Largest expected false-alarm rate on new normal images; ``0.01``
        when neither ``max_fpr`` nor ``metric`` is given.
    metric : {"f1"} or None, default=None
        Optimise this metric on ``(X, y)`` instead of bounding false alarms.

    Returns
    -------
    detector : object
        The detector (or pipeline) passed, with its final step's ``offset_``
        set to ``-threshold`` (``predict`` flags ``-score_samples > threshold``)
        and a ``calibration_`` dict describing it (a plain dict, so that a
        calibrated detector saves as a skad model file without pickle):
        ``method`` (``"max_fpr"`` or ``"f1"``), ``threshold`` (on the
        anomaly score ``-score_samples``), ``offset``, ``n_normal``,
        ``n_anomalous``, ``false_alarms`` and ``false_alarm_rate`` (normal
        images of ``X`` flagged), ``false_alarm_rate_upper`` (the 95%
        one-sided Clopper-Pearson bound of the rate on new normal images,
        see Notes), ``expected_false_alarm_rate`` (``max_fpr`` rule: the
        bound of the expectation, ``(k + 1) / (n + 1)``), ``max_fpr``,
        ``f1`` and ``detection_rate`` (on the anomalies of ``X``, NaN
        without any), and ``scale`` (used by :func:`score_normalized`).

    Raises
    ------
    ValueError
        If ``metric="f1"`` without both classes in ``y``, if both
        ``max_fpr`` and ``metric`` are given, or if ``X`` holds no normal
        image.

    See Also
    --------
    score_normalized : Scores in [0, 1], 0.5 at the calibrated threshold.
    false_alarm_upper_bound : The Clopper-Pearson bound of Notes.

    Notes
    -----
    *False-alarm budget.* Let ``a_(1) >= ... >= a_(n)`` be the anomaly
    scores of the ``n`` normal images of ``X`` and
    ``k = floor(max_fpr * (n + 1)) - 1``. The threshold is ``a_(k+1)``, so
    at most ``k`` of them are flagged. If new normal images are exchangeable
    with these (same process, not seen in ``fit``), a new one exceeds
    ``a_(k+1)`` with probability ``(k + 1) / (n + 1) <= max_fpr``, whatever
    the detector (a conformal guarantee). That is an expectation over the
    draw of the calibration images; the false-alarm rate of this particular
    threshold, ``r``, is itself random: for continuous scores
    ``r ~ Beta(k + 1, n - k)``, so ``P(r <= b) = 0.95`` for
    ``b = Beta(k + 1, n - k).ppf(0.95)``, which is the one-sided 95%
    Clopper-Pearson upper bound for ``k`` false alarms out of ``n``
    (``false_alarm_rate_upper``, :func:`false_alarm_upper_bound`). The bound
    shrinks with ``n``: for ``max_fpr=0.01`` it is 0.030 with 99 normal
    images (``k = 0``), 0.018 with 499 (``k = 4``) and 0.014 with 1,999
    (``k = 19``); for ``max_fpr=0.05``, 0.090 with 99 (``k = 4``) and 0.067
    with 499 (``k = 24``). Fewer than ``1 / max_fpr - 1`` images cannot
    meet the budget: the threshold is then their highest score, with a
    warning. On the new images themselves the observed rate adds binomial
    noise of ``sqrt(r (1 - r) / m)`` for ``m`` images.

    *F1.* The best F1 over all thresholds of the validation set is reached
    exactly on it; it is an optimistic estimate of the F1 on new images,
    more so on small validation sets.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from skad.thresholds import calibrate
    >>> rng = np.random.RandomState(0)
    >>> det = IsolationForest(random_state=0).fit(rng.normal(size=(200, 2)))
    >>> det = calibrate(det, rng.normal(size=(499, 2)), max_fpr=0.05)
    >>> det.calibration_["false_alarms"], round(det.calibration_["false_alarm_rate_upper"], 3)
    (24, 0.067)
    >>> float(np.mean(det.predict(rng.normal(size=(2000, 2))) == -1)) < 0.07
    True
    """
    if max_fpr is not None and metric is not None:
        raise ValueError(
            f"calibrate got max_fpr={max_fpr} and metric={metric!r}; pass one of them: "
            "max_fpr bounds the false alarms on normal images, metric='f1' optimises F1 on a "
            "labelled validation set."
        )
    target = final_detector(detector)
    check_is_fitted(target, "offset_")
    scores = _anomaly_scores(detector, X)
    if y is None:
        if metric is not None:
            raise ValueError(
                f"metric={metric!r} needs labels: pass calibrate(detector, X_val, y_val, "
                "metric='f1') with y_val = -1 for anomalies and +1 for normal images."
            )
        is_anomaly = np.zeros(len(scores), dtype=bool)
    else:
        is_anomaly = is_anomaly_from_labels(y, both_classes=False)
        if len(is_anomaly) != len(scores):
            raise ValueError(
                f"y has {len(is_anomaly)} labels but X has {len(scores)} images; pass one "
                "label per image."
            )
    normal = scores[~is_anomaly]
    if len(normal) == 0:
        raise ValueError(
            "X holds no normal image (every y is -1); calibrate needs normal images to "
            "measure false alarms on."
        )
    info = {"max_fpr": max_fpr, "f1": float("nan"), "expected_false_alarm_rate": float("nan")}
    if metric == "f1":
        if not is_anomaly.any():
            raise ValueError(
                "metric='f1' needs anomalies in the validation set, but y has none (-1); "
                "label some, or bound the false alarms instead: calibrate(detector, X_good, "
                "max_fpr=0.01)."
            )
        threshold, info["f1"] = _f1_threshold(is_anomaly, scores)
        info["method"] = "f1"
    else:
        info["max_fpr"] = DEFAULT_MAX_FPR if max_fpr is None else float(max_fpr)
        threshold, allowed = _max_fpr_threshold(normal, info["max_fpr"])
        info["method"] = "max_fpr"
        info["expected_false_alarm_rate"] = (allowed + 1) / (len(normal) + 1)
    flagged = scores > threshold
    n_false = int(flagged[~is_anomaly].sum())
    info.update(
        threshold=threshold,
        offset=-threshold,
        n_normal=int(len(normal)),
        n_anomalous=int(is_anomaly.sum()),
        false_alarms=n_false,
        false_alarm_rate=n_false / len(normal),
        false_alarm_rate_upper=false_alarm_upper_bound(n_false, len(normal)),
        detection_rate=float(flagged[is_anomaly].mean()) if is_anomaly.any() else float("nan"),
        scale=_normal_scale(threshold, normal),
    )
    if metric is None and is_anomaly.any():
        tp = int(flagged[is_anomaly].sum())
        info["f1"] = 2 * tp / (2 * tp + n_false + int(is_anomaly.sum()) - tp)
    target.offset_ = -threshold
    target.calibration_ = info
    return detector


def score_normalized(detector, X):
    """Anomaly scores in [0, 1], 0.5 at the calibrated threshold.

    ``sigmoid((a - t) / s)`` of the anomaly score ``a = -score_samples(X)``,
    with the threshold ``t`` and scale ``s`` set by :func:`calibrate`: the
    median normal image of the calibration set maps to 0.1, the threshold to
    0.5, so that ``score_normalized(detector, X) > 0.5`` exactly where
    ``predict(X) == -1``. It is non-decreasing in ``-score_samples`` (strictly
    increasing until it rounds to 0 or 1), so rankings and AUROC are those
    of ``score_samples``. It is not a calibrated probability of being
    anomalous.

    Parameters
    ----------
    detector : fitted detector or Pipeline
        Calibrated by :func:`calibrate` (the pipeline's final step, for a
        pipeline).
    X : array-like or sequence of image paths
        Images of the kind the detector was fitted on.

    Returns
    -------
    scores : ndarray of shape (n,), dtype float64
        In [0, 1], higher = more anomalous.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the detector is not calibrated, or was refitted (or its
        ``offset_`` changed) since :func:`calibrate`.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from skad.thresholds import calibrate, score_normalized
    >>> rng = np.random.RandomState(0)
    >>> det = IsolationForest(random_state=0).fit(rng.normal(size=(200, 2)))
    >>> det = calibrate(det, rng.normal(size=(200, 2)), max_fpr=0.05)
    >>> p = score_normalized(det, [[0.0, 0.0], [6.0, 6.0]])
    >>> bool(p[0] < 0.5 < p[1])
    True
    """
    from sklearn.exceptions import NotFittedError

    target = final_detector(detector)
    check_is_fitted(target, "offset_")
    info = getattr(target, "calibration_", None)
    if info is None or target.offset_ != info["offset"]:
        what = "is not calibrated" if info is None else "was refitted since calibrate"
        raise NotFittedError(
            f"This {type(target).__name__} {what}; call "
            "skad.thresholds.calibrate(detector, X_good) (or with y_val, metric='f1') first."
        )
    z = (_anomaly_scores(detector, X) - info["threshold"]) / info["scale"]
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic sigmoid, without overflow
