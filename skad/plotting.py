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


def _as_maps(anomaly_map):
    """``(maps, batch)``: a list of finite 2-D float32 maps, and whether a batch was given."""
    if isinstance(anomaly_map, (list, tuple)):
        maps, batch = [np.asarray(m, dtype=np.float32) for m in anomaly_map], True
    else:
        array = np.asarray(anomaly_map, dtype=np.float32)
        batch = array.ndim == 3
        maps = list(array) if batch else [array]
    for m in maps:
        if m.ndim != 2:
            raise ValueError(
                f"anomaly_map must be one map of shape (H, W) or a batch (n, H, W) as returned "
                f"by localize(X); got a map of shape {m.shape}. For one image, pass maps[i]."
            )
        if not np.isfinite(m).all():
            raise ValueError("anomaly_map contains NaN or inf; pass finite maps.")
    if not maps:
        raise ValueError("anomaly_map is an empty batch; pass at least one map.")
    return maps, batch


def _as_images(image, n):
    """``n`` images for ``n`` maps: the batch's rows, or one image for one map."""
    if n == 1 and not isinstance(image, (list, tuple)):
        array = np.asarray(image)
        if not (array.ndim >= 3 and array.shape[0] == 1 and array.ndim in (3, 4)
                and (array.ndim == 4 or array.shape[-1] not in (1, 3))):
            return [array]  # one image for one map
    if not isinstance(image, (list, tuple)) and np.ndim(image) < 3:
        raise ValueError(
            f"image is one image of shape {np.shape(image)} but anomaly_map holds {n} maps; "
            "pass one image per map (X[i] with maps[i], or X with localize(X))."
        )
    images = list(image) if isinstance(image, (list, tuple)) else list(np.asarray(image))
    if len(images) != n:
        raise ValueError(
            f"anomaly_map holds {n} maps but image holds {len(images)} images; pass one image "
            "per map (X[i] with maps[i], or X with localize(X))."
        )
    return images


def _overlay_axes(ax, n):
    if ax is None:
        if n == 1:
            return [_axes(None)]
        plt = import_optional("matplotlib.pyplot", extra="plot", purpose="skad.plotting",
                              package="matplotlib")
        _, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
        return list(axes.ravel())
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n:
        raise ValueError(f"ax holds {len(axes)} axes for {n} maps; pass one Axes per map.")
    return axes


def plot_overlay(image, anomaly_map, ax=None, *, alpha=0.5, cmap="jet", vmin=None, vmax=None,
                 threshold=None, title=None, colorbar=False):
    """Draw anomaly maps as translucent heatmaps over their images, on one colour scale.

    One image and its map, or a batch (``X`` and ``localize(X)``): every map
    of a call is drawn on the same colour scale, from the smallest to the
    largest value of all of them, so that a good part shown next to a
    defective one looks cold where it is cold. (Each map on its own range
    would make every part look hot somewhere.) Pass ``vmin`` and ``vmax`` to
    keep one scale across calls, e.g. ``0`` and a value calibrated on good
    parts.

    Parameters
    ----------
    image : array-like of shape (H, W), (H, W, C) or (C, H, W), or a batch
        The image, uint8 or float in [0, 1], gray or RGB; with a batch of
        maps, one image per map: an array ``(n, ...)`` or a list.
    anomaly_map : array-like of shape (h, w) or (n, h, w), or a list of maps
        Higher is more anomalous, as returned by a detector's ``localize``;
        each is resized bilinearly to its image when the sizes differ.
    ax : matplotlib Axes or sequence of Axes, default=None
        Where to draw: one Axes per map (a single Axes for one map). A new
        figure (one row of axes) when None.
    alpha : float, default=0.5
        Opacity of the heatmap.
    cmap : str, default="jet"
        Colormap of the heatmap.
    vmin, vmax : float, default=None
        Colour limits shared by every map of the call; when None, the
        smallest and largest value over all the call's maps.
    threshold : float, default=None
        Draw the contour of the map at this value (e.g. a defect-mask
        threshold) in white.
    title : str or sequence of str, default=None
        Axes title, or one title per map.
    colorbar : bool, default=False
        Add a colorbar (one per axes; they share the scale).

    Returns
    -------
    ax : matplotlib Axes, or ndarray of Axes
        The axes drawn on, one per map (an array when a batch was given);
        ``ax.images`` holds the image then the heatmap.

    Examples
    --------
    >>> from skad.plotting import plot_overlay
    >>> maps = det.localize(X[:4])  # doctest: +SKIP
    >>> plot_overlay(X[:4], maps, title=["part 0", "part 1", "part 2", "part 3"])  # doctest: +SKIP
    """
    maps, batch = _as_maps(anomaly_map)
    images = [_image_for_display(im) for im in _as_images(image, len(maps))]
    maps = [_resize_map(m, im.shape[:2]) for m, im in zip(maps, images)]
    lo = min(float(m.min()) for m in maps) if vmin is None else float(vmin)
    hi = max(float(m.max()) for m in maps) if vmax is None else float(vmax)
    if hi <= lo:  # flat maps: a visible, still shared, range
        hi = lo + max(abs(lo), 1.0) * 1e-6
    titles = [title] * len(maps) if title is None or isinstance(title, str) else list(title)
    if len(titles) != len(maps):
        raise ValueError(f"title holds {len(titles)} titles for {len(maps)} maps.")
    axes = _overlay_axes(ax, len(maps))
    for axis, shown, heat_map, heading in zip(axes, images, maps, titles):
        axis.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0,
                    interpolation="bilinear")
        heat = axis.imshow(heat_map, cmap=cmap, alpha=alpha, vmin=lo, vmax=hi,
                           interpolation="bilinear")
        if threshold is not None and heat_map.min() < threshold < heat_map.max():
            axis.contour(heat_map, levels=[float(threshold)], colors="white", linewidths=1.0)
        if colorbar:
            axis.figure.colorbar(heat, ax=axis, fraction=0.046, pad=0.04)
        axis.set_axis_off()
        if heading is not None:
            axis.set_title(heading)
    return np.array(axes, dtype=object) if batch else axes[0]


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
