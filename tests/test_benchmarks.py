"""The ELPV benchmark's registry and bookkeeping, on fake ELPV data."""

import numpy as np
import pandas as pd
import pytest
from sklearn.utils import Bunch

import skad.datasets
from skad.benchmarks import elpv


class MeanBrightness:
    """Anomaly score = mean brightness: a transparent stand-in for a detector."""

    def __init__(self, seed):
        self.seed = seed

    def fit(self, X, y):
        self.n_labeled_ = int((np.asarray(y) == -1).sum())
        return self

    def score_samples(self, X):
        return -np.asarray(X, dtype=float).mean(axis=(1, 2))


@pytest.fixture
def fake_elpv(monkeypatch):
    rng = np.random.RandomState(0)
    normal = rng.randint(0, 100, (40, 12, 12))
    anomalous = rng.randint(150, 256, (16, 12, 12))
    images = np.concatenate([normal, anomalous]).astype(np.uint8)
    probability = np.r_[np.zeros(40), np.ones(16)]
    cell_type = np.array(["mono", "poly"] * 28)
    monkeypatch.setattr(skad.datasets, "load_elpv", lambda: Bunch(
        images=images, probability=probability, cell_type=cell_type))
    yield
    elpv.MODELS.pop("bright", None)
    elpv.MODELS.pop("bright twice", None)


def test_main_writes_a_row_per_model_level_and_seed(fake_elpv, tmp_path):
    elpv.register("bright", lambda seed, args: MeanBrightness(seed))
    elpv.register("bright twice", lambda seed, args: MeanBrightness(seed),
                  rows=lambda est, X: {"a": -est.score_samples(X), "b": est.score_samples(X)})
    out = tmp_path / "res"
    summary = elpv.main(["--seeds", "0", "1", "--models", "bright", "bright twice",
                         "--levels", "0", "0.1", "--ablations", "--image-size", "8",
                         "--n-labeled", "2", "--out", str(out)])
    runs = pd.read_csv(f"{out}_runs.csv")
    assert len(runs) == 2 * 2 * 3  # seeds x levels x rows (bright, a, b)
    assert set(runs.model) == {"bright", "a", "b"}
    # bright anomalies score higher: perfect AUROC; row "b" is its reverse
    assert (runs.loc[runs.model != "b", "auroc"] == 1.0).all()
    assert (runs.loc[runs.model == "b", "auroc"] == 0.0).all()
    assert len(summary) == 3 * 2 and (summary.n_seeds == 2).all()
    assert "python benchmarks/elpv.py --seeds 0 1" in (tmp_path / "res.md").read_text()


def test_hard_setting_tests_only_unseen_type(fake_elpv, tmp_path):
    elpv.register("bright", lambda seed, args: MeanBrightness(seed))
    elpv.main(["--seeds", "0", "--models", "bright", "--levels", "0", "--ablations",
               "--image-size", "8", "--n-labeled", "3", "--setting", "hard",
               "--out", str(tmp_path / "hard")])
    runs = pd.read_csv(tmp_path / "hard_runs.csv")
    assert list(runs.setting) == ["hard mono"] and runs.auroc.iloc[0] == 1.0


def test_hard_setting_in_the_other_direction(fake_elpv, tmp_path, monkeypatch):
    from skad import model_selection

    seen = []
    split = model_selection.contaminated_split

    def spy(*args, **kwargs):
        seen.append(kwargs.get("seen_groups"))
        return split(*args, **kwargs)

    monkeypatch.setattr(model_selection, "contaminated_split", spy)
    elpv.register("bright", lambda seed, args: MeanBrightness(seed))
    elpv.main(["--seeds", "0", "--models", "bright", "--levels", "0", "--ablations",
               "--image-size", "8", "--n-labeled", "3", "--setting", "hard", "--seen", "poly",
               "--out", str(tmp_path / "hard")])
    assert seen == ["poly"]
    assert list(pd.read_csv(tmp_path / "hard_runs.csv").setting) == ["hard poly"]


def test_without_labels_fits_on_the_unlabelled_images_only():
    fitted = []

    class Spy(MeanBrightness):
        def fit(self, X, y=None):
            fitted.append((len(X), y))
            return self

    X = np.zeros((6, 4, 4))
    elpv.WithoutLabels(Spy(0)).fit(X, np.array([1, 1, -1, 1, -1, 1]))
    assert fitted == [(4, None)]


def test_unknown_model_is_an_error_listing_the_registry(fake_elpv, tmp_path):
    with pytest.raises(ValueError, match="unknown model.*registered.*ADL full"):
        elpv.main(["--models", "nope", "--out", str(tmp_path / "x")])


def test_dra_rows_build_the_paper_ablations_on_the_benchmark_schedule():
    from argparse import Namespace

    args = Namespace(image_size=64, epochs=3, steps=7, batch_size=12, lr=5e-4, device="cpu")
    heads = {name: elpv.MODELS[name].build(1, args).get_params()["heads"]
             for name in elpv.DRA_ABLATIONS}
    assert heads["DRA1A"] == ("seen",)
    assert heads["DRA2A"] == ("seen", "pseudo")
    assert heads["DRA3Ar"] == ("seen", "pseudo", "residual")
    assert heads["DRA3An"] == ("seen", "pseudo", "normality")
    assert heads["DRA"] == heads["DRA + reweighting"] == ("seen", "pseudo", "residual",
                                                          "normality")
    full = elpv.MODELS["DRA + reweighting"].build(1, args).get_params()
    assert full["divergence"] == "alpha" and elpv.MODELS["DRA"].build(1, args).divergence is None
    assert (full["image_size"], full["max_epochs"], full["steps_per_epoch"], full["batch_size"],
            full["lr"], full["random_state"]) == (64, 3, 7, 12, 5e-4, 1)
    devnet = elpv.MODELS["DevNet"].build(2, args)
    assert type(devnet).__name__ == "DeviationNetworkDetector"
    assert (devnet.max_epochs, devnet.steps_per_epoch, devnet.random_state) == (3, 7, 2)


def test_dra_rows_are_the_score_and_each_head_with_normality_negated():
    class Fitted:
        heads_ = ("pseudo", "normality")

        def head_scores(self, X):
            return pd.DataFrame({"pseudo": [1.0, 2.0], "normality": [5.0, 3.0],
                                 "score": [-4.0, -1.0]})

    rows = elpv.MODELS["DRA2A"].rows(Fitted(), None)
    assert list(rows) == ["DRA2A", "DRA2A pseudo head", "DRA2A normality head"]
    np.testing.assert_array_equal(rows["DRA2A"], [-4.0, -1.0])
    np.testing.assert_array_equal(rows["DRA2A pseudo head"], [1.0, 2.0])
    np.testing.assert_array_equal(rows["DRA2A normality head"], [-5.0, -3.0])
