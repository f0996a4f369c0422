"""skad.plotting, drawn headless (Agg) and saved as PNGs."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from skad.plotting import (  # noqa: E402
    plot_auroc_vs_contamination,
    plot_overlay,
    plot_score_histogram,
)


def _axes():
    fig = Figure(figsize=(4, 3))
    return fig, fig.add_subplot()


def _saved_png(fig, path):
    fig.savefig(path, dpi=50)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[:2] == (3 * 50, 4 * 50)  # figsize x dpi
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 20  # not a blank canvas
    return png


def test_overlay_resizes_map_to_image_and_draws_both(tmp_path):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (40, 60), dtype=np.uint8)
    anomaly_map = np.zeros((10, 15), dtype=np.float32)
    anomaly_map[2:5, 3:6] = 1.0
    fig, ax = _axes()
    assert plot_overlay(image, anomaly_map, ax=ax, title="part") is ax
    base, heat = ax.images
    assert base.get_array().shape == (40, 60)
    assert heat.get_array().shape == (40, 60)  # resized to the image
    heat_values = np.asarray(heat.get_array())
    assert heat_values[10:18, 14:22].mean() > 0.5 > heat_values[30:, 40:].max()
    assert ax.get_title() == "part"
    _saved_png(fig, tmp_path / "overlay.png")


@pytest.mark.parametrize("shape", [(3, 16, 16), (16, 16, 3), (16, 16, 1), (16, 16)])
def test_overlay_accepts_image_layouts(shape):
    image = np.random.RandomState(1).rand(*shape).astype(np.float32)
    _, ax = _axes()
    plot_overlay(image, np.ones((16, 16)), ax=ax)
    assert ax.images[0].get_array().shape[:2] == (16, 16)


def test_overlay_errors_name_the_argument():
    _, ax = _axes()
    with pytest.raises(ValueError, match="image must be one image"):
        plot_overlay(np.zeros((2, 3, 8, 8)), np.zeros((8, 8)), ax=ax)
    with pytest.raises(ValueError, match="one image of shape.*2 maps.*one image per map"):
        plot_overlay(np.zeros((8, 8)), np.zeros((2, 8, 8)), ax=ax)
    with pytest.raises(ValueError, match="3 maps but image holds 2 images"):
        plot_overlay(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="anomaly_map must be one map.*maps\\[i\\]"):
        plot_overlay(np.zeros((8, 8)), np.zeros((2, 2, 8, 8)), ax=ax)
    with pytest.raises(ValueError, match="NaN"):
        plot_overlay(np.zeros((8, 8)), np.full((8, 8), np.nan), ax=ax)
    with pytest.raises(ValueError, match="ax holds 1 axes for 2 maps"):
        plot_overlay(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), ax=ax)


def _good_and_defective():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2, 16, 16), dtype=np.uint8)
    maps = np.full((2, 16, 16), 1.0, dtype=np.float32)
    maps[0] += rng.uniform(0, 0.2, (16, 16))  # a good part: low, with some noise
    maps[1, 4:9, 4:9] = 10.0  # a defect
    return images, maps


def test_overlays_of_one_call_share_one_colour_scale(tmp_path):
    images, maps = _good_and_defective()
    fig = Figure(figsize=(4, 3))
    axes = fig.subplots(1, 2)
    drawn = plot_overlay(images, maps, ax=axes, title=["good", "defective"])
    assert isinstance(drawn, np.ndarray) and list(drawn) == list(axes)
    clims = [ax.images[1].get_clim() for ax in axes]
    assert clims[0] == clims[1] == (float(maps.min()), float(maps.max()))
    # the good part is drawn cold: its hottest pixel is in the bottom tenth of the scale
    good = axes[0].images[1]
    assert good.norm(np.asarray(good.get_array())).max() < 0.1
    assert [ax.get_title() for ax in axes] == ["good", "defective"]
    _saved_png(fig, tmp_path / "pair.png")


def test_overlay_scale_stays_overridable_and_draws_the_threshold_contour():
    images, maps = _good_and_defective()
    fig = Figure(figsize=(4, 3))
    axes = fig.subplots(1, 2)
    plot_overlay(list(images), list(maps), ax=axes, vmin=0.0, vmax=20.0, threshold=5.0)
    assert [ax.images[1].get_clim() for ax in axes] == [(0.0, 20.0), (0.0, 20.0)]
    assert len(axes[0].collections) == 0  # the good part never reaches the threshold
    assert len(axes[1].collections) == 1  # the defect's outline


def test_one_map_of_a_batch_with_one_image():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    _, ax = _axes()
    drawn = plot_overlay(image, np.ones((1, 16, 16)), ax=ax)
    assert drawn.shape == (1,) and drawn[0] is ax


def test_score_histogram_counts_each_class_on_shared_bins(tmp_path):
    rng = np.random.RandomState(0)
    scores = np.r_[rng.normal(0, 1, 70), rng.normal(3, 1, 30)]
    y = np.r_[np.ones(70, dtype=int), -np.ones(30, dtype=int)]
    fig, ax = _axes()
    plot_score_histogram(scores, y, ax=ax, bins=12, threshold=1.5)
    normal, anomalous = ax.containers
    assert sum(p.get_height() for p in normal) == 70
    assert sum(p.get_height() for p in anomalous) == 30
    assert [p.get_x() for p in normal] == [p.get_x() for p in anomalous]
    assert ax.lines[0].get_xdata()[0] == 1.5  # the threshold line
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["normal (70)", "anomalous (30)"]
    _saved_png(fig, tmp_path / "hist.png")


def test_score_histogram_accepts_boolean_labels_and_rejects_others():
    _, ax = _axes()
    plot_score_histogram([0.1, 0.2, 0.9], np.array([False, False, True]), ax=ax)
    assert sum(p.get_height() for p in ax.containers[1]) == 1
    with pytest.raises(ValueError, match="-1 = anomaly"):
        plot_score_histogram([0.1, 0.9], [0, 1], ax=ax)
    with pytest.raises(ValueError, match="one score per label"):
        plot_score_histogram([0.1, 0.2, 0.9], [1, -1], ax=ax)


def _summary():
    rows = []
    for model, base in (("ADL full", 0.8), ("NN reference", 0.85)):
        for level in (0.0, 0.1, 0.2):
            rows.append({"model": model, "setting": "general", "contamination": level,
                         "n_labeled": 10, "auroc_mean": base - level / 2, "auroc_std": 0.01,
                         "auprc_mean": 0.9, "auprc_std": 0.0})
    rows.append({"model": "ADL DL", "setting": "general", "contamination": 0.1,
                 "n_labeled": 10, "auroc_mean": 0.7, "auroc_std": np.nan})
    return pd.DataFrame(rows)


def test_auroc_vs_contamination_one_line_per_model(tmp_path):
    fig, ax = _axes()
    plot_auroc_vs_contamination(_summary().sample(frac=1, random_state=0), ax=ax)
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert sorted(lines) == ["ADL DL", "ADL full", "NN reference"]
    np.testing.assert_allclose(lines["ADL full"].get_xdata(), [0, 10, 20])  # percent, sorted
    np.testing.assert_allclose(lines["ADL full"].get_ydata(), [0.8, 0.75, 0.7])
    np.testing.assert_allclose(lines["ADL DL"].get_ydata(), [0.7])  # single seed: no std
    _saved_png(fig, tmp_path / "auroc.png")


def test_auroc_vs_contamination_splits_lines_by_n_labeled_and_checks_columns():
    df = _summary()
    df = pd.concat([df, df.assign(n_labeled=1, auroc_mean=df.auroc_mean - 0.1)])
    _, ax = _axes()
    plot_auroc_vs_contamination(df, ax=ax)
    assert "ADL full, n_labeled=1" in {c.get_label() for c in ax.containers}
    with pytest.raises(ValueError, match="auroc_std"):
        plot_auroc_vs_contamination(df.drop(columns="auroc_std"), ax=ax)
    with pytest.raises(TypeError, match="DataFrame"):
        plot_auroc_vs_contamination(df.to_dict(), ax=ax)


def test_new_pyplot_figure_when_no_axes():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_score_histogram([0.0, 1.0, 2.0], [1, 1, -1])
    try:
        assert ax.figure in [plt.figure(n) for n in plt.get_fignums()]
    finally:
        plt.close(ax.figure)
