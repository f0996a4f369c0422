"""Image labels in skad's outlier convention, read by the metrics and the plots.

numpy only, so that :mod:`skad.plotting` can use it without importing the
metrics' scipy, pandas and scikit-learn.
"""

import numpy as np

__all__ = ["is_anomaly_from_labels"]


def is_anomaly_from_labels(y_true, *, both_classes=True):
    """Return a boolean ``is_anomaly`` array from -1/+1 or boolean labels.

    ``both_classes=True`` (the metrics' case) refuses labels of one class only.
    """
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(
            f"y_true must be a 1-D array of image labels, got an array of shape {y.shape}."
        )
    if y.shape[0] == 0:
        raise ValueError("y_true is empty.")
    if y.dtype == object:  # e.g. a list mixing Python ints, or a pandas object column
        y = np.asarray(y.tolist())
    if y.dtype == bool:
        is_anomaly = y
    else:
        uniques = None
        if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating):
            uniques = np.unique(y)
            valid = bool(np.isin(uniques, [-1, 1]).all())
        else:
            valid = False
        if not valid:
            found = uniques if uniques is not None else np.unique(y.astype(str))
            raise ValueError(
                "y_true must encode anomalies either with skad's labels (-1 = anomaly, "
                "+1 = normal) or as a boolean array (True = anomaly); got "
                f"dtype {y.dtype} with values {found[:10].tolist()}. With 0/1 labels, "
                "`y == 1` is ambiguous (in skad +1 means *normal*): pass an explicit "
                "boolean array `is_anomaly` (True = anomaly) or convert to -1/+1, e.g. "
                "`np.where(is_anomaly, -1, 1)`."
            )
        is_anomaly = y == -1
    n_anomalies = int(is_anomaly.sum())
    if not both_classes:
        return is_anomaly
    if n_anomalies == 0 or n_anomalies == is_anomaly.shape[0]:
        present = "anomalies" if n_anomalies else "normal samples"
        raise ValueError(
            f"Only one class is present in y_true (all {present}); the metric is "
            "undefined. Both anomalies (-1 / True) and normal samples (+1 / False) "
            "are needed."
        )
    return is_anomaly
