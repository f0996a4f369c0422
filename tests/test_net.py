"""Balanced batches and the skorch net's batch hook."""

import numpy as np
import pytest
import torch

from skad._images import ImageInput, check_labels
from skad._net import PSEUDO, BalancedBatchSampler


def test_batches_are_half_unlabelled_half_labelled_anomalies():
    target = np.r_[np.zeros(20), np.ones(3)].astype(int)
    sampler = BalancedBatchSampler(target, 8, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5  # ceil(20 unlabelled / 4 per batch)
    for batch in batches:
        codes = [code for _, code in batch]
        assert codes == [0] * 4 + [1] * 4
        assert all(target[i] == code for i, code in batch)
    seen = [i for batch in batches for i, code in batch if code == 0]
    assert sorted(seen) == list(range(20))  # one pass over the unlabelled pool


def test_without_labelled_anomalies_the_anomaly_half_is_pseudo():
    target = np.zeros(10, dtype=int)
    batches = list(BalancedBatchSampler(target, 6, pseudo=True,
                                        generator=torch.Generator().manual_seed(0)))
    for batch in batches:
        assert [code for _, code in batch] == [0] * 3 + [PSEUDO] * 3


def test_without_pseudo_batches_are_all_unlabelled():
    batches = list(BalancedBatchSampler(np.zeros(10, int), 4, pseudo=False,
                                        generator=torch.Generator()))
    assert len(batches) == 3 and all(code == 0 for b in batches for _, code in b)


def test_pseudo_anomalies_are_the_detectors_explicit_choice():
    # the default makes no pseudo-anomaly slot, with or without labelled anomalies
    for target in (np.zeros(10, int), np.r_[np.zeros(10), np.ones(2)].astype(int)):
        batches = list(BalancedBatchSampler(target, 4, pseudo_fraction=0.5,
                                            generator=torch.Generator()))
        assert all(code != PSEUDO for b in batches for _, code in b)


def test_steps_per_epoch_wraps_around_the_pool():
    sampler = BalancedBatchSampler(np.zeros(5, int), 4, steps_per_epoch=7,
                                   generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == 7 and all(len(b) == 4 for b in batches)


def test_same_generator_seed_same_batches():
    target = np.r_[np.zeros(30), np.ones(2)].astype(int)
    a = list(BalancedBatchSampler(target, 8, generator=torch.Generator().manual_seed(5)))
    b = list(BalancedBatchSampler(target, 8, generator=torch.Generator().manual_seed(5)))
    assert a == b


def test_labels_become_internal_targets():
    np.testing.assert_array_equal(check_labels([1, -1, 1, 1], 4), [0, 1, 0, 0])
    np.testing.assert_array_equal(check_labels(None, 3), [0, 0, 0])
    np.testing.assert_array_equal(check_labels(np.array([1.0, -1.0, 1.0]), 3), [0, 1, 0])
    with pytest.raises(ValueError, match="predict's codes"):
        check_labels(np.array([True, False, False]), 3)


def test_image_input_layouts_load_identically():
    rng = np.random.RandomState(0)
    nhwc = rng.randint(0, 256, (3, 10, 12, 3)).astype(np.uint8)
    a = ImageInput(nhwc).load([0, 2], None)
    b = ImageInput(nhwc.transpose(0, 3, 1, 2)).load([0, 2], None)
    assert a.shape == (2, 3, 10, 12) and torch.equal(a, b)
    assert torch.allclose(a, torch.from_numpy(nhwc[[0, 2]]).permute(0, 3, 1, 2).float() / 255)
    gray = ImageInput(nhwc[..., 0]).load([1], 8)
    assert gray.shape == (1, 3, 8, 8) and torch.equal(gray[:, 0], gray[:, 2])


def test_missing_and_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImageInput([str(tmp_path / "missing.png")]).load([0], 8)
    with pytest.raises(ValueError, match="bad.png"):
        ImageInput([str(bad)]).load([0], 8)


def test_paths_are_read_only_when_their_batch_is_loaded(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "a.png")
    paths = [str(tmp_path / "a.png"), str(tmp_path / "not-yet-there.png")]
    data = ImageInput(paths)  # nothing is read here
    assert len(data) == 2 and data.original_size(0) == (9, 7)
    assert data.load([0], 16).shape == (1, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="not-yet-there"):
        data.load([1], 16)


def test_pseudo_fraction_mixes_labelled_and_pseudo_anomalies():
    target = np.r_[np.zeros(16), np.ones(2)].astype(int)
    batches = list(BalancedBatchSampler(target, 8, pseudo=True, pseudo_fraction=0.5,
                                        generator=torch.Generator().manual_seed(0)))
    for batch in batches:
        assert [code for _, code in batch] == [0] * 4 + [1] * 2 + [PSEUDO] * 2



@pytest.mark.parametrize("batch_size, n_anomalous", [(48, 16), (16, 5), (8, 2), (3, 1), (2, 1)])
def test_anomaly_share_sets_the_labelled_part_of_each_batch(batch_size, n_anomalous):
    target = np.r_[np.zeros(40), np.ones(3)].astype(int)
    sampler = BalancedBatchSampler(target, batch_size, anomaly_share=1 / 3,
                                   generator=torch.Generator().manual_seed(0))
    for batch in sampler:
        codes = [code for _, code in batch]
        assert codes == [0] * (batch_size - n_anomalous) + [1] * n_anomalous
    assert len(sampler) == -(-40 // (batch_size - n_anomalous))  # one pass, unlabelled part


def test_default_anomaly_share_is_half_for_every_batch_size():
    target = np.r_[np.zeros(10), np.ones(2)].astype(int)
    for batch_size in range(2, 40):
        explicit = BalancedBatchSampler(target, batch_size, anomaly_share=0.5)
        assert explicit.n_anomalous == BalancedBatchSampler(target, batch_size).n_anomalous \
            == batch_size // 2


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_anomaly_share_outside_the_open_unit_interval_is_named(share):
    with pytest.raises(ValueError, match="'anomaly_share'.*in \\(0, 1\\)"):
        BalancedBatchSampler(np.zeros(4, int), 4, anomaly_share=share)

def test_nearest_neighbour_reference_scores_defects_higher():
    from _helpers import make_tiny_images

    from skad._baselines import nearest_neighbour_scores

    X, is_anomaly, _ = make_tiny_images(n_normal=30, n_anomalous=6, size=32, seed=2)
    scores = nearest_neighbour_scores(X[:20], X[20:], image_size=32, bank_size=2048)
    test_anomalous = is_anomaly[20:]
    assert scores.shape == (16,)
    assert scores[test_anomalous].min() > np.median(scores[~test_anomalous])
