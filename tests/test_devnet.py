"""DeviationNetworkDetector: learning, pseudo-anomalies, skorch plumbing."""

import numpy as np
import pytest
import torch
from _helpers import make_tiny_images
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import roc_auc_score
from skorch.callbacks import Callback

from skad import DeviationNetworkDetector
from skad.detectors._devnet import PseudoAnomalies

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            batch_size=8, device="cpu")


def test_learns_digits_with_ten_labelled_anomalies(global_random_seed):
    # Real images: digit 0 is normal; 10 labelled anomalies from the other digits.
    digits = load_digits()
    X, t = (digits.images / 16.0).astype(np.float32), digits.target
    rng = np.random.RandomState(global_random_seed)
    normal = rng.permutation(np.flatnonzero(t == 0))
    anomalous = rng.permutation(np.flatnonzero(t != 0))
    train = np.r_[normal[:120], anomalous[:10]]
    test = np.r_[normal[120:], anomalous[10:110]]
    y = np.r_[np.ones(120), -np.ones(10)].astype(int)
    det = DeviationNetworkDetector(
        backbone="test_efficientnet", pretrained=False, image_size=48, max_epochs=8,
        batch_size=16, lr=1e-3, device="cpu", random_state=global_random_seed,
    ).fit(X[train], y)
    assert roc_auc_score(t[test] == 0, det.score_samples(X[test])) >= 0.9


def test_learns_tabular_outliers():
    X, _ = make_blobs(n_samples=200, centers=[[0, 0, 0]], cluster_std=1.0, random_state=0)
    rng = np.random.RandomState(0)
    outliers = rng.uniform(4, 6, size=(30, 3)) * rng.choice([-1, 1], size=(30, 3))
    X_train = np.r_[X[:150], outliers[:5]]
    y_train = np.r_[np.ones(150), -np.ones(5)].astype(int)
    det = DeviationNetworkDetector(max_epochs=30, random_state=0).fit(X_train, y_train)
    X_test = np.r_[X[150:], outliers[5:]]
    is_normal = np.r_[np.ones(50), np.zeros(25)]
    assert roc_auc_score(is_normal, det.score_samples(X_test)) >= 0.95
    assert det.n_features_in_ == 3


def test_pseudo_anomalies_on_images_change_only_tagged_images():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 1.0])
    X_new, y_new = PseudoAnomalies(gen)(X, y)
    assert torch.equal(y_new, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    assert torch.equal(X_new[[0, 1, 2, 5]], X[[0, 1, 2, 5]])
    assert not torch.equal(X_new[3], X[3]) and not torch.equal(X_new[4], X[4])
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 1.0]))  # inputs untouched


def test_pseudo_anomalies_on_rows_permute_each_feature():
    gen = torch.Generator().manual_seed(0)
    X = torch.arange(40, dtype=torch.float32).view(10, 4)
    y = torch.tensor([0.0] * 2 + [2.0] * 8)
    X_new, y_new = PseudoAnomalies(gen)(X, y)
    assert torch.equal(X_new[:2], X[:2])
    assert (y_new[2:] == 1).all()
    for j in range(4):  # each column keeps its values, in a new order
        assert torch.equal(X_new[2:, j].sort().values, X[2:, j])
    assert not torch.equal(X_new[2:], X[2:])


def test_pseudo_anomalies_leave_batches_without_tags_alone():
    X, y = torch.rand(4, 3, 8, 8), torch.tensor([0.0, 0.0, 1.0, 1.0])
    X_new, y_new = PseudoAnomalies(torch.Generator())(X, y)
    assert X_new is X and y_new is y


def test_callbacks_are_passed_through_and_not_mutated():
    class CountEpochs(Callback):
        def __init__(self):
            self.n = 0

        def on_epoch_end(self, net, **kwargs):
            self.n += 1

    X, is_anomaly, _ = make_tiny_images(n_normal=12, n_anomalous=2)
    mine = CountEpochs()
    det = DeviationNetworkDetector(**{**TINY, "max_epochs": 2}, callbacks=[mine])
    det.fit(X, np.where(is_anomaly, -1, 1))
    assert mine.n == 0
    used = dict(det.net_.callbacks_)["CountEpochs"]
    assert used.n == 2
    assert len(det.history_) == 2 and "gradient_clipping" in dict(det.net_.callbacks_)


def test_verbose_prints_epoch_losses(capsys):
    X, _, _ = make_tiny_images(n_normal=12, n_anomalous=0)
    DeviationNetworkDetector(**TINY, verbose=1).fit(X)
    out = capsys.readouterr().out
    assert "train_loss" in out and "epoch" in out


def test_steps_per_epoch_sets_batches_per_epoch():
    X, _, _ = make_tiny_images(n_normal=12, n_anomalous=0)
    det = DeviationNetworkDetector(**TINY, steps_per_epoch=3).fit(X)
    assert len(det.history_[-1, "batches"]) == 3


def test_auto_offset_is_devnet_rule():
    X, _, _ = make_tiny_images(n_normal=12, n_anomalous=0)
    det = DeviationNetworkDetector(**TINY).fit(X)
    assert det.offset_ == pytest.approx(-1.96)


def test_caller_module_backbone_is_not_trained():
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    before = [p.clone() for p in backbone.parameters()]
    X, is_anomaly, _ = make_tiny_images(n_normal=12, n_anomalous=2)
    det = DeviationNetworkDetector(**{**TINY, "backbone": backbone})
    det.fit(X, np.where(is_anomaly, -1, 1))
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))
    assert np.isfinite(det.score_samples(X)).all()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"top_k": 0.0}, "top_k"),
        ({"batch_size": 1}, "batch_size"),
        ({"contamination": 0.6}, "contamination"),
        ({"device": "tpu"}, "device"),
        ({"margin": -1.0}, "margin"),
    ],
)
def test_invalid_parameters_are_named(params, match):
    X, _, _ = make_tiny_images(n_normal=8, n_anomalous=0)
    with pytest.raises(ValueError, match=match):
        DeviationNetworkDetector(**{**TINY, **params}).fit(X)


def test_pipeline_with_contamination_injector():
    from sklearn.pipeline import make_pipeline

    from skad import ContaminationInjector

    X, is_anomaly, _ = make_tiny_images(n_normal=20, n_anomalous=6, seed=1)
    pool, X = X[is_anomaly][:4], np.r_[X[~is_anomaly], X[is_anomaly][4:]]
    y = np.r_[np.ones(20), -np.ones(2)].astype(int)
    pipe = make_pipeline(
        ContaminationInjector(pool, contamination=0.2, random_state=0),
        DeviationNetworkDetector(**TINY, random_state=0, contamination=0.2),
    ).fit(X, y)
    injector = pipe.named_steps["contaminationinjector"]
    assert injector.n_injected_ == 4  # 20% of the 20 unlabelled rows
    assert set(np.unique(pipe.predict(X))) <= {-1, 1}
    assert pipe.score_samples(X).shape == (22,)
