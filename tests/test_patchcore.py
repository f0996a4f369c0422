"""PatchCoreDetector: bank, labels, pruning, threshold and maps on tiny images."""

import math

import numpy as np
import pytest
import torch
from _helpers import make_tiny_images

from skad import PatchCoreDetector
from skad.metrics import image_auroc, pixel_auroc

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, batch_size=8,
            device="cpu", random_state=0)


@pytest.fixture(scope="module")
def images():
    """20 normal images, then 4 with a bright square, with their defect masks."""
    X, is_anomaly, masks = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    return X, is_anomaly, masks


def defect_cells(masks, min_cover=0.25, grid=4):
    """(image, patch) pairs whose cell of the 4x4 feature grid is >= min_cover defect."""
    cover = masks.reshape(len(masks), grid, 8, grid, 8).mean(axis=(2, 4)).reshape(len(masks), -1)
    return {(int(i), int(p)) for i, p in zip(*np.nonzero(cover >= min_cover))}


def test_obvious_anomalies_score_higher_than_normals(images):
    X, is_anomaly, masks = images
    X_new, new_anomaly, new_masks = make_tiny_images(n_normal=10, n_anomalous=10, seed=1)
    det = PatchCoreDetector(**TINY, coreset_ratio=0.25).fit(X[~is_anomaly])
    scores = -det.score_samples(X_new)
    assert image_auroc(np.where(new_anomaly, -1, 1), scores) == 1.0
    maps = det.localize(X_new[new_anomaly])
    assert pixel_auroc(new_masks[new_anomaly], maps) > 0.8  # on a 4x4 feature grid


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 1.0])
def test_bank_is_the_coreset_of_the_unlabelled_patches(images, ratio):
    X, is_anomaly, _ = images
    y = np.where(is_anomaly, -1, 1)
    det = PatchCoreDetector(**TINY, coreset_ratio=ratio).fit(X, y)
    n_patches = 20 * 16
    bank = det.module_.memory_bank
    assert len(bank) == len(det.bank_origin_) == math.ceil(ratio * n_patches)
    origins = {tuple(o) for o in det.bank_origin_.tolist()}
    assert len(origins) == len(bank)  # no repeats
    assert not {i for i, _ in origins} & set(np.flatnonzero(is_anomaly))  # labels stay out
    # the bank holds the very patches named by bank_origin_
    with torch.no_grad():
        emb = det.module_.embedding(torch.as_tensor(X).permute(0, 3, 1, 2).float() / 255)
    patches = emb.permute(0, 2, 3, 1).reshape(len(X), 16, -1)
    expected = patches[det.bank_origin_[:, 0], det.bank_origin_[:, 1]]
    torch.testing.assert_close(bank, expected, atol=1e-5, rtol=1e-4)


def test_training_images_in_the_full_bank_score_zero(images):
    X, is_anomaly, _ = images
    det = PatchCoreDetector(**TINY, coreset_ratio=1.0).fit(X[~is_anomaly])
    np.testing.assert_allclose(det.score_samples(X[~is_anomaly]), 0.0, atol=1e-3)


def test_prune_with_labels_removes_the_planted_contaminant(images):
    X, is_anomaly, masks = images
    # image 20 is an unlabelled contaminant; 21-23 are labelled anomalies of the same kind
    y = np.r_[np.ones(21), -np.ones(3)].astype(int)
    defect = {cell for cell in defect_cells(masks) if cell[0] == 20}
    plain = PatchCoreDetector(**TINY, coreset_ratio=1.0).fit(X, y)
    pruned = PatchCoreDetector(**TINY, coreset_ratio=1.0, prune_with_labels=True).fit(X, y)
    in_plain = {tuple(o) for o in plain.bank_origin_.tolist()}
    in_pruned = {tuple(o) for o in pruned.bank_origin_.tolist()}
    removed = {tuple(o) for o in pruned.pruned_origin_.tolist()}
    assert defect <= in_plain
    assert defect <= removed and not defect & in_pruned
    assert removed == in_plain - in_pruned
    assert defect and len(removed - defect) <= 0.05 * len(in_plain)  # normal patches stay
    # a new anomaly of the same kind is no longer explained by the contaminant
    X_new, new_anomaly, _ = make_tiny_images(n_normal=10, n_anomalous=10, seed=2)
    y_new = np.where(new_anomaly, -1, 1)
    assert (image_auroc(y_new, -pruned.score_samples(X_new))
            >= image_auroc(y_new, -plain.score_samples(X_new)))
    assert -pruned.score_samples(X[20:21])[0] > -plain.score_samples(X[20:21])[0]


def test_prune_without_labels_warns(images):
    with pytest.warns(UserWarning, match="no labelled anomaly") as record:
        PatchCoreDetector(**TINY, prune_with_labels=True).fit(images[0])
    assert record[0].filename == __file__  # points at the caller's line


def test_prune_needs_two_unlabelled_images(images):
    X = images[0][:2]
    with pytest.raises(ValueError, match="1 unlabelled image.*prune_with_labels=False"):
        PatchCoreDetector(**TINY, prune_with_labels=True).fit(X, [1, -1])


def test_reweighting_needs_a_bank_of_b_patches(images):
    with pytest.raises(ValueError, match="reweight_neighbors=3 needs.*kept 1"):
        PatchCoreDetector(**TINY, coreset_ratio=1e-9, reweight_neighbors=3).fit(images[0])


def test_refused_tabular_fit_leaves_no_fitted_attribute():
    det = PatchCoreDetector(**TINY)
    with pytest.raises(ValueError, match="needs images"):
        det.fit(np.zeros((10, 4)))
    assert not [k for k in vars(det) if k.endswith("_") and not k.startswith("_")]


def test_reweighting_scales_scores_within_bounds(images):
    X, is_anomaly, _ = images
    plain = PatchCoreDetector(**TINY, coreset_ratio=0.5).fit(X[~is_anomaly])
    weighted = PatchCoreDetector(**TINY, coreset_ratio=0.5, reweight_neighbors=3)
    weighted.fit(X[~is_anomaly])
    s, s_w = -plain.score_samples(X), -weighted.score_samples(X)
    assert np.all(s_w <= s + 1e-6) and np.all(s_w >= (1 - 1 / 3) * s - 1e-6)
    assert image_auroc(np.where(is_anomaly, -1, 1), s_w) == 1.0


def test_auto_offset_is_the_tukey_fence_of_leave_own_image_out_scores(images):
    X, is_anomaly, _ = images
    y = np.where(is_anomaly, -1, 1)
    det = PatchCoreDetector(**TINY, coreset_ratio=0.5).fit(X, y)
    module = det.module_
    with torch.no_grad():
        emb = module.embedding(torch.as_tensor(X).permute(0, 3, 1, 2).float() / 255)
    patches = emb.permute(0, 2, 3, 1).reshape(len(X), 16, -1).double()
    bank, source = module.memory_bank.double(), det.bank_origin_[:, 0]
    loo = []
    for i in np.flatnonzero(~is_anomaly):
        others = bank[torch.as_tensor(source != i)]
        loo.append(float(torch.cdist(patches[i], others).min(dim=1).values.max()))
    q1, q3 = np.percentile(loo, [25, 75])
    assert det.offset_ == pytest.approx(-(q3 + 1.5 * (q3 - q1)), rel=1e-4)


def test_auto_threshold_flags_new_anomalies_and_few_normals(images):
    X, is_anomaly, _ = images
    det = PatchCoreDetector(**TINY, coreset_ratio=0.25).fit(X[~is_anomaly])
    X_new, new_anomaly, _ = make_tiny_images(n_normal=40, n_anomalous=10, seed=3)
    pred = det.predict(X_new)
    assert np.mean(pred[new_anomaly] == -1) >= 0.7
    assert np.mean(pred[~new_anomaly] == -1) <= 0.1


def test_tabular_input_is_refused():
    with pytest.raises(ValueError, match="needs images.*DeviationNetworkDetector"):
        PatchCoreDetector(**TINY).fit(np.zeros((10, 4)))


@pytest.mark.parametrize("param, value", [("coreset_ratio", 0.0), ("coreset_ratio", 1.5),
                                          ("reweight_neighbors", 1), ("projection_dim", 0)])
def test_bad_parameters_raise(images, param, value):
    with pytest.raises(ValueError, match=param):
        PatchCoreDetector(**TINY, **{param: value}).fit(images[0])
