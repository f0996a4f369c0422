"""BoundaryGuidedDetector: training batches, phases, labels, shifts fixed at fit, learning."""

import numpy as np
import pytest
import torch
from _helpers import make_tiny_images

from skad import BoundaryGuidedDetector
from skad._images import ImageInput
from skad.detectors._bgad import FlowTrainingSet
from skad.detectors._frozen import FeatureCache
from skad.metrics import image_auroc
from skad.nn.bgad import level_conditions

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, n_blocks=2,
            cond_dim=16, max_epochs=2, steps_per_epoch=None, batch_size=8, device="cpu",
            random_state=0)


@pytest.fixture(scope="module")
def data():
    X, is_anomaly, masks = make_tiny_images(n_normal=24, n_anomalous=6, size=32, seed=0)
    y = np.where(is_anomaly, -1, 1)
    return X, y, masks


def _cache(X):
    torch.manual_seed(0)
    conv1 = torch.nn.Conv2d(3, 2, 4, stride=4).eval()
    conv2 = torch.nn.Conv2d(3, 3, 8, stride=8).eval()
    return FeatureCache(lambda x: (conv1(x), conv2(x)), ImageInput(X), image_size=32,
                        batch_size=4, device="cpu")


def test_training_batches_sample_positions_and_code_every_vector(data):
    X, _, masks = data
    target = np.zeros(len(X))
    target[[24, 25, 26]] = 1
    mask = torch.zeros(1, 32, 32)
    mask[0, :16, :16] = 1  # the top-left quarter
    dataset = FlowTrainingSet([_cache(X)], target, masks={25: mask}, n_positions=16,
                              cond_dim=8, generator=torch.Generator().manual_seed(0))
    X_batch, codes = dataset.__getitems__([(3, 0), (25, 1), (24, 1)])
    (v0, c0), (v1, c1) = X_batch
    # 16 of the 64 cells of the stride-4 level, all 16 of the stride-8 level
    assert v0.shape == (3, 16, 2) and c0.shape == (3, 16, 8)
    assert v1.shape == (3, 16, 3) and c1.shape == (3, 16, 8)
    # each vector is the feature of the cell its condition encodes
    cells = level_conditions(4, 4, 8)
    where = [int((cells == c).all(1).nonzero()) for c in c1[0]]
    assert sorted(where) == list(range(16))  # without replacement
    flat = _cache(X).get([3])[1][0].permute(1, 2, 0).reshape(16, 3)
    torch.testing.assert_close(v1[0], flat[where])
    # rows come sorted by index: 3 (unlabelled), 24 (no mask: candidates), 25 (masked)
    assert (codes[1][0] == 0).all() and (codes[1][1] == 2).all()
    where = [int((cells == c).all(1).nonzero()) for c in c1[2]]
    coded = torch.zeros(16, dtype=torch.long)
    coded[where] = codes[1][2]
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[:2, :2] = 1
    torch.testing.assert_close(coded.view(4, 4), expected)


def test_labels_and_masks_change_the_fit(data):
    X, y, masks = data
    plain = BoundaryGuidedDetector(**TINY).fit(X)
    labelled = BoundaryGuidedDetector(**TINY).fit(X, y)
    masked = BoundaryGuidedDetector(**TINY).fit(X, y, masks=masks)
    s = [d.score_samples(X) for d in (plain, labelled, masked)]
    assert not np.allclose(s[0], s[1]) and not np.allclose(s[1], s[2])
    assert len(plain.history_) == TINY["max_epochs"]


def test_copy_paste_pseudo_anomalies_need_masks(data):
    X, y, _ = data
    with pytest.raises(ValueError, match="masks=.*pseudo_anomalies='perlin'"):
        BoundaryGuidedDetector(**TINY, pseudo_anomalies="copy_paste").fit(X, y)


def test_shifts_are_fixed_at_fit_and_scores_are_per_image(data):
    X, y, _ = data
    det = BoundaryGuidedDetector(**TINY).fit(X, y)
    shift = det.module_.shift.clone()
    together = det.score_samples(X)
    alone = np.concatenate([det.score_samples(X[i:i + 1]) for i in (0, 5, 27)])
    np.testing.assert_allclose(alone, together[[0, 5, 27]], rtol=1e-5, atol=1e-6)
    det.score_samples(X[::-1])
    torch.testing.assert_close(det.module_.shift, shift)
    # the shifts are the largest unlabelled training log-likelihoods: the likeliest
    # unlabelled training position scores 0 on its own level
    assert shift.shape == (3,) and torch.isfinite(shift).all()


@pytest.mark.parametrize("center", ["position", "channel"])
def test_standardisation_is_fitted_on_the_unlabelled_images(data, center):
    X, y, _ = data
    det = BoundaryGuidedDetector(**TINY, center=center).fit(X, y)
    flows = det.module_.flows
    levels = det.module_.embed(ImageInput(X[y == 1]).load(range(int((y == 1).sum())), 32))
    for k, f in enumerate(levels):
        z = flows.standardize(k, f)
        axes = (0, 2, 3)
        if center == "position":  # zero mean at every position
            torch.testing.assert_close(z.mean(0), torch.zeros_like(z[0]), atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(z.mean(axes), torch.zeros(len(z[0])), atol=1e-4, rtol=0)
        spread = (z ** 2).mean(axes)
        torch.testing.assert_close(spread, torch.ones_like(spread), atol=1e-3, rtol=0)


def test_auto_offset_is_the_tukey_fence_of_unlabelled_training_scores(data):
    X, y, _ = data
    det = BoundaryGuidedDetector(**TINY).fit(X, y)
    scores = -det.score_samples(X)[y == 1]
    q1, q3 = np.percentile(scores, [25, 75])
    assert det.offset_ == pytest.approx(-(q3 + 1.5 * (q3 - q1)), rel=1e-5)


def test_flows_learn_the_normal_stripes():
    # bright squares on striped images: the flows, trained on normal images only,
    # find them (the encoder is a random-weight network, so this is the flows' work)
    X, is_anomaly, _ = make_tiny_images(n_normal=40, n_anomalous=10, size=32, seed=3)
    det = BoundaryGuidedDetector(**{**TINY, "max_epochs": 6}, pseudo_anomalies=None)
    det.fit(X[~is_anomaly])
    assert image_auroc(np.where(is_anomaly, -1, 1), -det.score_samples(X)) > 0.9
    losses = det.history_[:, "train_loss"]
    assert losses[-1] < losses[0]


def test_training_progress_switches_to_the_boundary_phase(data):
    X, y, _ = data
    det = BoundaryGuidedDetector(**TINY, boundary_start=0.5).fit(X, y)
    assert det.net_.criterion_.progress >= 0.5


@pytest.mark.parametrize("top_k, expect_anomalies", [(0.1, True), (None, False)])
def test_maskless_anomalies_are_left_out_without_a_top_k(data, monkeypatch, top_k,
                                                         expect_anomalies):
    X, y, _ = data
    seen = []
    getitems = FlowTrainingSet.__getitems__

    def spy(self, items):
        seen.extend(int(i) for i, _ in items)
        return getitems(self, items)

    monkeypatch.setattr(FlowTrainingSet, "__getitems__", spy)
    BoundaryGuidedDetector(**TINY, anomaly_top_k=top_k).fit(X, y)
    labelled = set(np.flatnonzero(y == -1))
    assert bool(labelled & set(seen)) == expect_anomalies
    assert set(seen) - labelled  # unlabelled images always train
