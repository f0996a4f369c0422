"""Files written by the ``skad`` command: score tables, map PNGs and report figures.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no
GUI backend), so reports can be written on headless machines and from threads.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._optional import import_optional

__all__ = ["MapWriter", "format_table", "have_matplotlib", "save_auroc_plot", "save_overlays",
           "save_score_histograms", "write_scores_csv"]


def have_matplotlib():
    """Whether matplotlib can be imported (the ``plot`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def format_table(rows):
    """Plain-text table of ``{"model", "AUROC", "AUPRC", "seconds"}`` rows."""
    width = max(len("model"), *(len(r["model"]) for r in rows)) + 2
    lines = [f"{'model':<{width}}{'AUROC':>7}{'AUPRC':>8}{'time':>8}"]
    for r in rows:
        lines.append(f"{r['model']:<{width}}{r['AUROC']:>7.3f}{r['AUPRC']:>8.3f}"
                     f"{r['seconds']:>7.0f}s")
    return "\n".join(lines)


def _figure(ncols, nrows=1, size=3.2):
    Figure = import_optional("matplotlib.figure", extra="plot", purpose="skad's report figures",
                             package="matplotlib").Figure
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def save_overlays(path, images, maps, titles, *, vmax=None, suptitle=None):
    """One row of heatmap overlays (see :func:`skad.plotting.plot_overlay`) saved as a PNG.

    The colour scale is ``[0, vmax]`` for every image (``vmax``: the largest
    map value when None), so that rows written with the same ``vmax`` compare.
    """
    from .plotting import plot_overlay

    fig, axes = _figure(len(images))
    if vmax is None:
        vmax = max(float(np.max(m)) for m in maps)
    for ax, image, anomaly_map, title in zip(axes, images, maps, titles):
        plot_overlay(image, anomaly_map, ax=ax, vmin=0.0, vmax=max(vmax, 1e-12), title=title)
    if suptitle:
        fig.suptitle(suptitle)
    fig.savefig(path, dpi=100)
    return path


def save_score_histograms(path, panels, y):
    """Score histograms per class, one panel per ``(title, scores, threshold)``."""
    from .plotting import plot_score_histogram

    fig, axes = _figure(len(panels), size=4.5)
    for ax, (title, scores, threshold) in zip(axes, panels):
        plot_score_histogram(scores, y, ax=ax, threshold=threshold, density=True, title=title)
    fig.savefig(path, dpi=100)
    return path


def save_auroc_plot(path, summary, title=None):
    """:func:`skad.plotting.plot_auroc_vs_contamination` of a benchmark summary, as a PNG."""
    from .plotting import plot_auroc_vs_contamination

    fig, (ax,) = _figure(1, size=5.5)
    plot_auroc_vs_contamination(summary, ax=ax, title=title)
    fig.savefig(path, dpi=100)
    return path


class MapWriter:
    """Writes anomaly maps as 8-bit grayscale PNGs under ``folder``.

    A pixel is ``255 * clip(map / vmax, 0, 1)``. With ``vmax=None`` the
    scale is fixed by the first batch: 1 when its maps lie in [0, 1]
    (probability maps), else their 99.9th percentile; it is kept for every
    later batch so that images stay comparable, and written to
    ``folder/scale.txt``.
    """

    def __init__(self, folder, *, vmax=None):
        self.folder = Path(folder)
        self.vmax = vmax
        self.written = 0

    def _scale(self, maps):
        if self.vmax is None:
            values = np.concatenate([np.ravel(m) for m in maps])
            lo, hi = float(values.min()), float(values.max())
            self.vmax = 1.0 if lo >= 0.0 and hi <= 1.0 else float(np.percentile(values, 99.9))
            self.vmax = self.vmax if self.vmax > 0 else 1.0
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "scale.txt").write_text(
                f"pixel = 255 * clip(map / {self.vmax:.6g}, 0, 1); map = anomaly map from "
                "localize (higher = more anomalous)\n"
            )
        return self.vmax

    def write(self, maps, names):
        """Write one PNG per map; ``names`` are relative paths (extension replaced by .png)."""
        from PIL import Image

        vmax = self._scale(maps)
        paths = []
        for anomaly_map, name in zip(maps, names):
            target = (self.folder / name).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(np.asarray(anomaly_map, dtype=np.float64) / vmax, 0.0, 1.0)
            Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(target)
            paths.append(os.fspath(target))
        self.written += len(paths)
        return paths


def write_scores_csv(path, columns):
    """Write a dict of equal-length columns as a CSV; returns the DataFrame."""
    df = pd.DataFrame(columns)
    df.to_csv(path, index=False, float_format="%.6g")
    return df
