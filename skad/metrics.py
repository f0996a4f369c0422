"""Evaluation metrics for visual anomaly detection.

All metrics take numpy arrays and return a Python :class:`float`. The
**anomaly is the positive class** everywhere:

- image-level metrics (:func:`image_auroc`, :func:`image_auprc`) take labels in
  skad's ``-1`` (anomaly) / ``+1`` (normal) encoding, or a boolean array with
  ``True`` marking anomalies, and *anomaly scores* (higher = more anomalous,
  i.e. ``-detector.score_samples(X)``);
- pixel-level metrics (:func:`pixel_auroc`, :func:`aupro`) take ground-truth
  defect masks and anomaly maps (higher = more anomalous, as returned by
  ``detector.localize(X)``), both of shape ``(n_images, height, width)``.

:func:`evaluate` computes all of them for a fitted detector (or a pipeline
ending in one), and :data:`anomaly_auprc_scorer` and :data:`anomaly_auroc_scorer`
are scorers usable as ``GridSearchCV(scoring=anomaly_auprc_scorer)``.

This module deliberately depends on numpy, scipy, pandas and scikit-learn only
(:mod:`skad.pipeline`, which it reads pipelines with, imports no more).
"""

import numbers
import warnings

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, make_scorer

from ._labels import is_anomaly_from_labels
from .pipeline import final_detector, localize

__all__ = [
    "image_auroc",
    "image_auprc",
    "pixel_auroc",
    "aupro",
    "evaluate",
    "anomaly_auprc_scorer",
    "anomaly_auroc_scorer",
]

# 8-connectivity, as in the official MVTec AD evaluation code
# (``pro_curve_util.compute_pro`` uses ``structure = np.ones((3, 3))``).
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)

# Number of query values processed at once by the rank-based AUROC, to bound
# the memory used by ``np.searchsorted`` on tens of millions of pixels.
_CHUNK = 1 << 22


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------


def _check_finite_numeric(a, name):
    """Check that ``a`` is real-valued and finite; return it as a float array."""
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    elif not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be real-valued, got dtype {a.dtype}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity; values must be finite.")
    return a


def _check_labels_scores(y_true, anomaly_scores):
    """Validate image-level inputs; return ``(is_anomaly, scores)``."""
    is_anomaly = is_anomaly_from_labels(y_true)
    scores = np.asarray(anomaly_scores)
    if scores.ndim != 1:
        raise ValueError(
            "anomaly_scores must be a 1-D array of per-image scores, got an array of "
            f"shape {scores.shape}."
        )
    if scores.shape[0] != is_anomaly.shape[0]:
        raise ValueError(
            f"y_true and anomaly_scores have inconsistent lengths: {is_anomaly.shape[0]} labels "
            f"but {scores.shape[0]} scores."
        )
    return is_anomaly, _check_finite_numeric(scores, "anomaly_scores")


def _check_masks_maps(masks, maps):
    """Validate pixel-level inputs; return ``(is_defect, maps)``."""
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.ndim != 3:
        raise ValueError(
            f"masks must have shape (n_images, height, width), got an array of shape {masks.shape}."
        )
    if maps.ndim != 3:
        raise ValueError(
            f"maps must have shape (n_images, height, width), got an array of shape {maps.shape}."
        )
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks and maps must have the same shape, got masks of shape {masks.shape} "
            f"and maps of shape {maps.shape}."
        )
    if masks.size == 0:
        raise ValueError(f"masks and maps are empty (shape {masks.shape}).")
    if masks.dtype == bool:
        is_defect = masks
    else:
        masks = _check_finite_numeric(masks, "masks")
        is_defect = masks > 0
    maps = _check_finite_numeric(maps, "maps")
    return is_defect, maps


# ---------------------------------------------------------------------------
# core computations
# ---------------------------------------------------------------------------


def _rank_count_sum(sorted_ref, queries):
    """Sum over queries of ``#(ref < q) + #(ref <= q)`` (exact Python int)."""
    total = 0
    for start in range(0, queries.shape[0], _CHUNK):
        q = queries[start : start + _CHUNK]
        total += int(np.searchsorted(sorted_ref, q, side="left").sum(dtype=np.int64))
        total += int(np.searchsorted(sorted_ref, q, side="right").sum(dtype=np.int64))
    return total


def _binary_auroc(pos_scores, neg_scores):
    """Exact ROC AUC, ``P(pos > neg) + P(pos == neg) / 2`` (Mann-Whitney U).

    The larger group is sorted in place (callers pass copies) and searched with
    the values of the smaller one, in chunks, so memory stays linear in the
    input.
    """
    n_pos, n_neg = pos_scores.shape[0], neg_scores.shape[0]
    if n_pos <= n_neg:
        # sum over positives of #(neg < pos) + #(neg == pos) / 2
        neg_scores.sort()
        count2 = _rank_count_sum(neg_scores, pos_scores)
    else:
        # sum over negatives of #(pos > neg) + #(pos == neg) / 2
        pos_scores.sort()
        count2 = 2 * n_pos * n_neg - _rank_count_sum(pos_scores, neg_scores)
    return count2 / (2 * n_pos * n_neg)


def _region_weights(is_defect):
    """Weight ``1 / |region|`` of every defect pixel (C order) and the region count."""
    region_ids = []
    n_regions = 0
    for mask in is_defect:
        if not mask.any():
            continue
        labels, n_labels = ndimage.label(mask, structure=_STRUCTURE_8)
        region_ids.append(labels[mask] + (n_regions - 1))
        n_regions += n_labels
    region_ids = np.concatenate(region_ids)
    sizes = np.bincount(region_ids, minlength=n_regions)
    return 1.0 / sizes[region_ids], n_regions


def _area_up_to(fpr, pro, max_fpr):
    """Trapezoidal area under a (non-decreasing ``fpr``) curve on ``[0, max_fpr]``.

    The curve is linearly interpolated at exactly ``max_fpr``.
    """
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    x, y = fpr[:stop], pro[:stop]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)
    if stop < fpr.shape[0] and x[-1] < max_fpr:
        x0, y0, x1, y1 = fpr[stop - 1], pro[stop - 1], fpr[stop], pro[stop]
        y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area += (max_fpr - x0) * (y0 + y_at) / 2.0
    return area


def _pro_curve(is_defect, maps, max_fpr, num_thresholds):
    """(FPR, PRO) polyline from (0, 0) to (1, 1) (see :func:`aupro`)."""
    n_defect = int(is_defect.sum())
    if n_defect == 0:
        raise ValueError(
            "masks contain no defect pixel; the PRO curve needs at least one defect region."
        )
    if n_defect == is_defect.size:
        raise ValueError("masks contain no normal pixel; the false positive rate is undefined.")
    weights, n_regions = _region_weights(is_defect)
    defect_scores = maps[is_defect]
    normal_scores = maps[~is_defect]
    n_normal = normal_scores.shape[0]

    # Number of false positives that can matter for the area up to max_fpr (the +2
    # guards against rounding in max_fpr * n_normal). Only the normal scores that
    # are >= the n_keep-th largest one are sorted; false-positive counts of lower
    # thresholds are clipped to len(top), which is > max_fpr * n_normal: this only
    # moves points lying beyond max_fpr along horizontal segments of the curve, so
    # the area up to max_fpr is unchanged (the subsampled curve needs them exact).
    n_keep = int(np.floor(max_fpr * n_normal)) + 2
    if num_thresholds is None and n_keep < n_normal:
        normal_scores.partition(n_normal - n_keep)
        cut = normal_scores[n_normal - n_keep]
        top = normal_scores[normal_scores >= cut]
    else:
        top = normal_scores
    top.sort()

    order = np.argsort(defect_scores, kind="stable")[::-1]
    defect_scores = defect_scores[order]  # descending
    cum_weight = np.cumsum(weights[order])
    # Mathematically cum_weight[-1] == n_regions; dividing by the computed total
    # makes PRO reach exactly 1 once every defect pixel is above the threshold.
    total_weight = cum_weight[-1]

    if num_thresholds is None:
        # Exact curve over all distinct thresholds. Between two consecutive distinct
        # defect scores t_prev > t only normal pixels change, so the curve is
        # horizontal there and only its corners are needed: for each distinct defect
        # score t, the point just above t, (#normal > t, PRO(t_prev)), and the point
        # at t, (#normal >= t, PRO(t)); a tie between normal and defect pixels at t
        # gives a diagonal segment, as in the MVTec AD evaluation code.
        last = np.append(defect_scores[1:] != defect_scores[:-1], True)
        thresholds = defect_scores[last]
        pro_at = np.minimum(cum_weight[last] / total_weight, 1.0)
        fp_above = top.shape[0] - np.searchsorted(top, thresholds, side="right")
        fp_at = top.shape[0] - np.searchsorted(top, thresholds, side="left")
        fpr = np.empty(2 * thresholds.shape[0] + 2)
        pro = np.empty_like(fpr)
        fpr[1:-1:2], fpr[2:-1:2] = fp_above / n_normal, fp_at / n_normal
        pro[1:-1:2], pro[2:-1:2] = np.r_[0.0, pro_at[:-1]], pro_at
    else:
        # Approximate curve at evenly spaced thresholds between min and max.
        thresholds = np.linspace(maps.max(), maps.min(), num_thresholds)
        ascending = defect_scores[::-1]
        suffix_weight = np.r_[cum_weight[::-1], 0.0]  # weight of defect scores >= asc[i]
        idx = np.searchsorted(ascending, thresholds, side="left")
        fp_at = n_normal - np.searchsorted(top, thresholds, side="left")
        fpr = np.r_[0.0, fp_at / n_normal, 1.0]
        pro = np.r_[0.0, np.minimum(suffix_weight[idx] / total_weight, 1.0), 1.0]
    fpr[0], pro[0], fpr[-1], pro[-1] = 0.0, 0.0, 1.0, 1.0
    return fpr, pro


# ---------------------------------------------------------------------------
# public metrics
# ---------------------------------------------------------------------------


def image_auroc(y_true, anomaly_scores):
    """Image-level area under the ROC curve, with the anomaly as positive class.

    Ties between an anomaly and a normal image count one half, as in
    :func:`sklearn.metrics.roc_auc_score`; the result only depends on the
    ordering of the scores.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Image labels, either skad's ``-1`` (anomaly) / ``+1`` (normal), or a
        boolean array with ``True`` marking anomalies. Other encodings (e.g.
        ``0/1``) are rejected because they are ambiguous. Both classes must be
        present.

    anomaly_scores : array-like of shape (n_samples,)
        Finite anomaly scores, higher = more anomalous, e.g.
        ``-detector.score_samples(X)``.

    Returns
    -------
    auroc : float
        Probability that a random anomaly scores higher than a random normal
        image (ties count 1/2). ``0.5`` for constant scores.

    Raises
    ------
    ValueError
        If ``y_true`` uses another encoding or holds a single class, or if the
        scores are not finite or do not match ``y_true`` in length.

    See Also
    --------
    image_auprc : Average precision with the anomaly as positive class.
    sklearn.metrics.roc_auc_score : The same value for ``y_true == -1``.

    Examples
    --------
    >>> from skad.metrics import image_auroc
    >>> y = [-1, 1, 1, -1]
    >>> image_auroc(y, [0.9, 0.1, 0.4, 0.35])
    0.75
    >>> image_auroc([True, False, False, True], [0.9, 0.1, 0.4, 0.35])
    0.75
    """
    is_anomaly, scores = _check_labels_scores(y_true, anomaly_scores)
    return float(_binary_auroc(scores[is_anomaly], scores[~is_anomaly]))


def image_auprc(y_true, anomaly_scores):
    """Image-level average precision, with the anomaly as positive class.

    Computed with :func:`sklearn.metrics.average_precision_score` on
    ``is_anomaly``, i.e. the area under the precision-recall curve of the
    anomaly class (step-wise, without interpolation).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Image labels, either skad's ``-1`` (anomaly) / ``+1`` (normal), or a
        boolean array with ``True`` marking anomalies. Other encodings (e.g.
        ``0/1``) are rejected because they are ambiguous. Both classes must be
        present.

    anomaly_scores : array-like of shape (n_samples,)
        Finite anomaly scores, higher = more anomalous, e.g.
        ``-detector.score_samples(X)``.

    Returns
    -------
    auprc : float
        Average precision of the anomaly class. For constant scores it equals
        the fraction of anomalies.

    Raises
    ------
    ValueError
        If ``y_true`` uses another encoding or holds a single class, or if the
        scores are not finite or do not match ``y_true`` in length.

    See Also
    --------
    image_auroc : ROC AUC with the anomaly as positive class.
    anomaly_auprc_scorer : This metric as a scorer for model selection.

    Examples
    --------
    >>> from skad.metrics import image_auprc
    >>> y = [-1, 1, 1, -1]
    >>> image_auprc(y, [0.9, 0.1, 0.4, 0.35])
    0.8333333333333333
    >>> image_auprc(y, [0.5, 0.5, 0.5, 0.5])
    0.5
    """
    is_anomaly, scores = _check_labels_scores(y_true, anomaly_scores)
    return float(average_precision_score(is_anomaly.astype(np.int8), scores, pos_label=1))


def pixel_auroc(masks, maps):
    """Pixel-level ROC AUC pooled over all pixels of all images.

    Every pixel of every image is one sample, defect pixels being positive
    (the MVTec AD convention). Computed exactly from ranks (ties count 1/2)
    with one sort and binary searches, so that memory stays linear in the
    number of pixels.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width)
        Ground-truth defect masks: boolean, or numeric where any value ``> 0``
        marks a defect pixel. Must contain defect and normal pixels.

    maps : array-like of shape (n_images, height, width)
        Finite anomaly maps, higher = more anomalous, e.g.
        ``detector.localize(X)``.

    Returns
    -------
    auroc : float
        Probability that a random defect pixel scores higher than a random
        normal pixel (ties count 1/2). ``0.5`` for a constant map.

    Raises
    ------
    ValueError
        If the shapes differ or are not 3-D, if ``maps`` or ``masks`` is not
        finite, or if all pixels are defect or all are normal.

    See Also
    --------
    aupro : Area under the per-region overlap curve.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.metrics import pixel_auroc
    >>> masks = np.array([[[0, 1],
    ...                    [0, 0]]])
    >>> maps = np.array([[[0.1, 0.9],
    ...                   [0.5, 0.95]]])
    >>> pixel_auroc(masks, maps)
    0.6666666666666666
    """
    is_defect, maps = _check_masks_maps(masks, maps)
    n_defect = int(is_defect.sum())
    if n_defect == 0 or n_defect == is_defect.size:
        present = "defect" if n_defect else "normal"
        raise ValueError(
            f"Only one class is present in masks (all pixels are {present}); pixel "
            "AUROC is undefined."
        )
    return float(_binary_auroc(maps[is_defect], maps[~is_defect]))


def aupro(masks, maps, *, max_fpr=0.3, num_thresholds=None):
    """Normalised area under the per-region overlap (PRO) curve.

    Follows the MVTec AD evaluation protocol [1]_. Each connected component
    of a defect mask is a *region* (8-connectivity, see Notes). For a threshold
    ``t``, the per-region overlap ``PRO(t)`` is the mean over **all** regions
    of all images of the fraction of the region's pixels with ``map >= t``,
    and the false positive rate ``FPR(t)`` is the fraction of normal pixels
    (``mask == 0``, pooled over all images) with ``map >= t``. The curve
    ``(FPR(t), PRO(t))`` runs from ``(0, 0)`` (``t = +inf``) to ``(1, 1)`` and
    is integrated with the trapezoidal rule from ``FPR = 0`` to
    ``FPR = max_fpr``, interpolating it linearly at exactly ``max_fpr``;
    the area is divided by ``max_fpr``.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width)
        Ground-truth defect masks: boolean, or numeric where any value ``> 0``
        marks a defect pixel. Images without defects contribute only normal
        pixels. At least one defect and one normal pixel are required.

    maps : array-like of shape (n_images, height, width)
        Finite anomaly maps, higher = more anomalous, e.g.
        ``detector.localize(X)``.

    max_fpr : float, default=0.3
        Integration limit on the false positive rate, in ``(0, 1]``. ``0.3``
        is the MVTec AD convention.

    num_thresholds : int, default=None
        If None, the curve is exact: it goes through every distinct value of
        ``maps`` as a threshold (ties between defect and normal pixels give
        diagonal segments, as in the MVTec AD code). If an int ``>= 2``, the
        curve is only evaluated at ``num_thresholds`` thresholds evenly spaced
        between the minimum and maximum of ``maps`` (as in several common
        implementations); this approximation is not invariant to monotonic
        rescaling of the maps, and is rarely needed because the exact
        computation is fast.

    Returns
    -------
    aupro : float
        Normalised area in ``[0, 1]``; ``1.0`` for maps that score every defect
        pixel above every normal pixel, ``max_fpr / 2`` for a constant map.

    Raises
    ------
    ValueError
        If the shapes differ or are not 3-D, if ``maps`` or ``masks`` is not
        finite, if there is no defect or no normal pixel, or if ``max_fpr`` or
        ``num_thresholds`` is invalid.

    See Also
    --------
    pixel_auroc : Pixel-level ROC AUC.

    Notes
    -----
    Connected components are computed with :func:`scipy.ndimage.label` and a
    3x3 structuring element of ones, i.e. with 8-connectivity (diagonal
    neighbours belong to the same region), as in the official MVTec AD
    evaluation script (``pro_curve_util.py``).

    The exact computation sorts only the defect pixels and, among the normal
    pixels, only the top ``max_fpr`` fraction (found with a linear-time
    partition); the curve is built from its corners with vectorised numpy
    operations. Temporary memory is about 1.5 times the size of ``maps``
    (e.g. about 200 MB for 500 float32 maps of 256x256 pixels).

    References
    ----------
    .. [1] P. Bergmann, K. Batzner, M. Fauser, D. Sattlegger and C. Steger,
       "The MVTec Anomaly Detection Dataset: A Comprehensive Real-World Dataset
       for Unsupervised Anomaly Detection", International Journal of Computer
       Vision, 129(4), 1038-1059, 2021.

    Examples
    --------
    One image with a two-pixel defect region and four normal pixels:

    >>> import numpy as np
    >>> from skad.metrics import aupro
    >>> masks = np.array([[[1, 1, 0],
    ...                    [0, 0, 0]]])
    >>> maps = np.array([[[0.9, 0.4, 0.8],
    ...                   [0.3, 0.2, 0.1]]])
    >>> aupro(masks, maps, max_fpr=0.5)
    0.75
    >>> aupro(masks, masks)
    1.0
    >>> aupro(masks, np.zeros((1, 2, 3)))
    0.15
    """
    if (
        isinstance(max_fpr, bool)
        or not isinstance(max_fpr, numbers.Real)
        or not 0.0 < max_fpr <= 1.0
    ):
        raise ValueError(f"max_fpr must be a float in (0, 1], got {max_fpr!r}.")
    if num_thresholds is not None and (
        isinstance(num_thresholds, bool)
        or not isinstance(num_thresholds, numbers.Integral)
        or num_thresholds < 2
    ):
        raise ValueError(f"num_thresholds must be None or an integer >= 2, got {num_thresholds!r}.")
    is_defect, maps = _check_masks_maps(masks, maps)
    max_fpr = float(max_fpr)
    fpr, pro = _pro_curve(is_defect, maps, max_fpr, num_thresholds)
    return float(_area_up_to(fpr, pro, max_fpr) / max_fpr)


def evaluate(detector, X, y, masks=None, *, max_fpr=0.3):
    """Evaluate a fitted detector with image- and pixel-level metrics.

    Parameters
    ----------
    detector : object
        Fitted detector following skad's contract: ``score_samples(X)``
        (higher = more normal) and, if ``masks`` is given,
        ``localize(X)`` returning anomaly maps of shape
        ``(n_images, height, width)`` (higher = more anomalous). A
        :class:`~sklearn.pipeline.Pipeline` whose last step is such a
        detector works too: its transformers are applied first
        (:func:`skad.pipeline.localize`).

    X : array-like
        Test images, in whatever format ``detector`` accepts.

    y : array-like of shape (n_images,)
        Image labels, ``-1`` (anomaly) / ``+1`` (normal), or boolean with
        ``True`` marking anomalies.

    masks : array-like of shape (n_images, height, width), default=None
        Ground-truth defect masks (``> 0`` = defect). If given, the
        pixel-level metrics are computed too; ``localize`` is called once.

    max_fpr : float, default=0.3
        Integration limit of :func:`aupro`.

    Returns
    -------
    results : pandas.Series
        ``image_auroc`` and ``image_auprc`` computed on
        ``-detector.score_samples(X)``, plus ``pixel_auroc`` and ``aupro``
        when ``masks`` is given. Named after the detector's class (a
        pipeline's final step's).

    See Also
    --------
    image_auroc, image_auprc, pixel_auroc, aupro

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from skad.metrics import evaluate
    >>> X = np.array([[0.0], [0.1], [-0.1], [0.05], [8.0]])
    >>> detector = IsolationForest(random_state=0).fit(X)
    >>> evaluate(detector, X, [1, 1, 1, 1, -1])
    image_auroc    1.0
    image_auprc    1.0
    Name: IsolationForest, dtype: float64
    """
    anomaly_scores = -np.asarray(detector.score_samples(X), dtype=np.float64)
    results = {
        "image_auroc": image_auroc(y, anomaly_scores),
        "image_auprc": image_auprc(y, anomaly_scores),
    }
    if masks is not None:
        maps = localize(detector, X)
        results["pixel_auroc"] = pixel_auroc(masks, maps)
        results["aupro"] = aupro(masks, maps, max_fpr=max_fpr)
    return pd.Series(results, name=type(final_detector(detector)).__name__, dtype=np.float64)


def _undefined_on_one_class(y_true):
    """Warn and return True when a scorer's fold holds one class only (its score is NaN)."""
    is_anomaly = is_anomaly_from_labels(y_true, both_classes=False)
    n_anomalies = int(is_anomaly.sum())
    if 0 < n_anomalies < is_anomaly.shape[0]:
        return False
    what = "no anomaly (-1)" if n_anomalies == 0 else "no normal image (+1)"
    warnings.warn(
        f"A validation fold of {is_anomaly.shape[0]} images has {what}; its score is NaN. "
        "Cross-validate with cv=skad.model_selection.LabelledAnomalyKFold(n_splits), which "
        "keeps labelled anomalies in every fold (or raises saying why it cannot).",
        UndefinedMetricWarning, stacklevel=2,
    )
    return True


def _anomaly_auprc_from_score_samples(y_true, score_samples):
    """Anomaly-class average precision from ``score_samples`` (higher = normal)."""
    if _undefined_on_one_class(y_true):
        return np.nan
    return image_auprc(y_true, -np.asarray(score_samples, dtype=np.float64))


def _anomaly_auroc_from_score_samples(y_true, score_samples):
    """Image AUROC from ``score_samples`` (higher = normal)."""
    if _undefined_on_one_class(y_true):
        return np.nan
    return image_auroc(y_true, -np.asarray(score_samples, dtype=np.float64))


# ``make_scorer`` only validates a *string* response_method against the
# classifier methods; a one-element tuple selects ``score_samples``.
anomaly_auprc_scorer = make_scorer(
    _anomaly_auprc_from_score_samples, response_method=("score_samples",)
)
anomaly_auprc_scorer.__doc__ = """Scorer: average precision of the anomaly class.

Calls ``estimator.score_samples(X)`` (higher = more normal) and returns
``image_auprc(y, -estimator.score_samples(X))``, with ``y`` in ``-1`` (anomaly)
/ ``+1`` (normal) or boolean (``True`` = anomaly). Higher is better, so it can
be passed directly as ``GridSearchCV(..., scoring=anomaly_auprc_scorer)``. A
fold with one class only scores NaN with an
:class:`~sklearn.exceptions.UndefinedMetricWarning` that names
:class:`skad.model_selection.LabelledAnomalyKFold`, the splitter that keeps
anomalies in every fold.
"""

anomaly_auroc_scorer = make_scorer(
    _anomaly_auroc_from_score_samples, response_method=("score_samples",)
)
anomaly_auroc_scorer.__doc__ = """Scorer: image AUROC with the anomaly as positive class.

``image_auroc(y, -estimator.score_samples(X))``; the same ranking as
``scoring="roc_auc"`` on a skad detector, but a fold with one class only
scores NaN with an :class:`~sklearn.exceptions.UndefinedMetricWarning` naming
:class:`skad.model_selection.LabelledAnomalyKFold` (scikit-learn's
``"roc_auc"`` warns without saying what to do).
"""
