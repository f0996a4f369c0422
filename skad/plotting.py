"""Plots for anomaly detection: heatmap overlays, score histograms, benchmark curves.

matplotlib is an optional dependency (``pip install "skad[plot]"``), imported
only when a function is called. Every function draws on ``ax`` when given
(so figures can be composed, or made without pyplot from a
:class:`matplotlib.figure.Figure`) and otherwise on a new pyplot figure; it
returns the axes.
"""

import numpy as np

from ._labels import is_anomaly_from_labels
from ._optional import import_optional

__all__ = ["plot_auroc_vs_contamination", "plot_overlay", "plot_score_histogram"]


def _axes(ax):
    if ax is not None:
        return ax
    plt = import_optional("matplotlib.pyplot", extra="plot", purpose="skad.plotting",
                          package="matplotlib")
    _, ax = plt.subplots()
    return ax


def _image_for_display(image):
    """``(H, W)`` or ``(H, W, 3)`` float image in [0, 1] from the layouts skad accepts."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)  # (C, H, W) -> (H, W, C)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(
            f"image must be one image of shape (H, W), (H, W, C) or (C, H, W) with C in "
            f"{{1, 3}}; got shape {image.shape}. For a batch, pass X[i]."
        )
    if image.dtype.kind in "ui":
        return image.astype(np.float32) / 255.0
    if image.dtype.kind == "b":
        return image.astype(np.float32)
    if image.dtype.kind != "f":
        raise ValueError(f"image has dtype {image.dtype}; pass uint8 or floats in [0, 1].")
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _resize_map(anomaly_map, shape):
    if anomaly_map.shape == shape:
        return anomaly_map
    from scipy.ndimage import zoom

    factors = (shape[0] / anomaly_map.shape[0], shape[1] / anomaly_map.shape[1])
    resized = zoom(anomaly_map, factors, order=1, grid_mode=True, mode="nearest")
    return resized[: shape[0], : shape[1]]


def plot_overlay(image, anomaly_map, ax=None, *, alpha=0.5, cmap="jet", vmin=None, vmax=None,
                 title=None, colorbar=False):
    """Draw an anomaly map as a translucent heatmap over its image.

    Parameters
    ----------
    image : array-like of shape (H, W), (H, W, C) or (C, H, W)
        The image, uint8 or float in [0, 1], gray or RGB.
    anomaly_map : array-like of shape (h, w)
        Higher is more anomalous, as returned (per image) by a detector's
        ``localize``; resized bilinearly to the image when the sizes differ.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    alpha : float, default=0.5
        Opacity of the heatmap.
    cmap : str, default="jet"
        Colormap of the heatmap.
    vmin, vmax : float, default=None
        Colour limits of the heatmap; the map's own range when None. Pass
        fixed limits (e.g. 0 and 1 for probabilities) to compare images.
    title : str, default=None
        Axes title.
    colorbar : bool, default=False
        Add a colorbar for the heatmap.

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on; ``ax.images`` holds the image then the heatmap.

    Examples
    --------
    >>> from skad.plotting import plot_overlay
    >>> maps = det.localize(X[:1])  # doctest: +SKIP
    >>> plot_overlay(X[0], maps[0], title="part 0")  # doctest: +SKIP
    """
    shown = _image_for_display(image)
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim == 3 and anomaly_map.shape[0] == 1:
        anomaly_map = anomaly_map[0]
    if anomaly_map.ndim != 2:
        raise ValueError(
            f"anomaly_map must be one map of shape (H, W); got shape {anomaly_map.shape}. "
            "For maps from localize(X), pass maps[i]."
        )
    if not np.isfinite(anomaly_map).all():
        raise ValueError("anomaly_map contains NaN or inf; pass a finite map.")
    anomaly_map = _resize_map(anomaly_map, shown.shape[:2])
    ax = _axes(ax)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="bilinear")
    heat = ax.imshow(anomaly_map, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                     interpolation="bilinear")
    if colorbar:
        ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.04)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def plot_score_histogram(scores, y, ax=None, *, bins=30, threshold=None, density=False,
                         labels=("normal", "anomalous"), title=None):
    """Histograms of anomaly scores, one per class, on shared bins.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Anomaly scores, higher = more anomalous (``-det.score_samples(X)``).
    y : array-like of shape (n,)
        ``-1`` for anomalies and ``+1`` for normal samples (predict's codes),
        or booleans with True for anomalies.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    bins : int or sequence, default=30
        Number of bins, or bin edges, shared by both classes.
    threshold : float, default=None
        Draw a vertical line at this anomaly score (for a fitted detector,
        ``-det.offset_``).
    density : bool, default=False
        Normalise each histogram to unit area (classes of different sizes).
    labels : tuple of str, default=("normal", "anomalous")
        Legend names of the classes.
    title : str, default=None
        Axes title.

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on; ``ax.containers`` holds the normal then the
        anomalous bars.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_anomaly = is_anomaly_from_labels(y)
    if scores.ndim != 1 or len(scores) != len(is_anomaly):
        raise ValueError(
            f"scores must be 1-D with one score per label; got shape {scores.shape} for "
            f"{len(is_anomaly)} labels."
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contains NaN or inf; pass finite anomaly scores.")
    edges = np.histogram_bin_edges(scores, bins=bins)
    ax = _axes(ax)
    for mask, label, colour in ((~is_anomaly, labels[0], "tab:blue"),
                                (is_anomaly, labels[1], "tab:red")):
        ax.hist(scores[mask], bins=edges, alpha=0.6, density=density, color=colour,
                label=f"{label} ({int(mask.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("anomaly score (higher = more anomalous)")
    ax.set_ylabel("density" if density else "images")
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax


_CURVE_COLUMNS = ("model", "contamination", "auroc_mean", "auroc_std")


def plot_auroc_vs_contamination(df, ax=None, *, title=None):
    """AUROC (mean +- std over seeds) against the contamination ratio, one line per model.

    Parameters
    ----------
    df : pandas.DataFrame
        Benchmark summary with columns ``model``, ``contamination``,
        ``auroc_mean`` and ``auroc_std``, as written by ``skad benchmark
        elpv`` (``<out>.csv``). When ``n_labeled`` or ``setting`` columns hold
        several values, each combination gets its own line.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    title : str, default=None
        Axes title.

    Returns
    -------
    ax : matplotlib Axes
        The axes drawn on, one line (with error bars) per model.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in _CURVE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"df lacks the column(s) {missing}; it needs {list(_CURVE_COLUMNS)}, as in the "
            "summary CSV written by `skad benchmark elpv`."
        )
    if df.empty:
        raise ValueError("df is empty; there is nothing to plot.")
    keys = ["model"] + [c for c in ("setting", "n_labeled")
                        if c in df.columns and df[c].nunique() > 1]
    ax = _axes(ax)
    for key, group in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = str(key[0]) + "".join(f", {name}={value}" for name, value in
                                      zip(keys[1:], key[1:]))
        group = group.sort_values("contamination")
        ax.errorbar(group["contamination"].to_numpy(float) * 100,
                    group["auroc_mean"].to_numpy(float),
                    yerr=group["auroc_std"].fillna(0.0).to_numpy(float), marker="o", capsize=3,
                    label=label)
    ax.set_xlabel("contamination of the training data (%)")
    ax.set_ylabel("image AUROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax
