"""PaDiMDetector: Gaussians, labels, channel subset, threshold and maps on tiny images."""

import numpy as np
import pytest
import torch
from _helpers import make_tiny_images

from skad import PaDiMDetector
from skad.metrics import image_auroc, pixel_auroc

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, batch_size=8,
            device="cpu", random_state=0, n_features=16)


@pytest.fixture(scope="module")
def images():
    X, is_anomaly, masks = make_tiny_images(n_normal=30, n_anomalous=4, size=32, seed=0)
    return X, is_anomaly, masks


def test_obvious_anomalies_score_higher_than_normals(images):
    X, is_anomaly, _ = images
    det = PaDiMDetector(**TINY).fit(X[~is_anomaly])
    X_new, new_anomaly, new_masks = make_tiny_images(n_normal=10, n_anomalous=10, seed=1)
    assert image_auroc(np.where(new_anomaly, -1, 1), -det.score_samples(X_new)) == 1.0
    maps = det.localize(X_new[new_anomaly])
    assert maps.shape == (10, 32, 32)
    assert pixel_auroc(new_masks[new_anomaly], maps) > 0.85


def test_labelled_anomalies_are_left_out_of_the_gaussians(images):
    X, is_anomaly, _ = images
    with_labels = PaDiMDetector(**TINY).fit(X, np.where(is_anomaly, -1, 1))
    normals_only = PaDiMDetector(**TINY).fit(X[~is_anomaly])
    a, b = with_labels.module_, normals_only.module_
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.precision, b.precision)
    # ...whereas the same images unlabelled do move them
    contaminated = PaDiMDetector(**TINY).fit(X).module_
    assert not torch.allclose(contaminated.mean, b.mean)


def test_fitted_gaussians_are_the_sample_statistics(images):
    X, is_anomaly, _ = images
    det = PaDiMDetector(**TINY, reg_covar=0.5).fit(X[~is_anomaly])
    module = det.module_
    with torch.no_grad():
        emb = module.embedding(torch.as_tensor(X[~is_anomaly]).permute(0, 3, 1, 2) / 255.0)
    feats = emb[:, torch.as_tensor(det.channel_index_)].flatten(2).permute(2, 0, 1).double()
    p = 27  # any position
    mean, cov = feats[p].mean(0), torch.cov(feats[p].T)
    torch.testing.assert_close(module.mean[p].double(), mean, atol=1e-5, rtol=1e-4)
    precision = torch.linalg.inv(cov + 0.5 * torch.eye(16, dtype=cov.dtype))
    torch.testing.assert_close(module.precision[p].double(), precision, atol=1e-4, rtol=1e-3)


def test_channel_subset_is_seeded(images):
    X = images[0][:10]
    a = PaDiMDetector(**{**TINY, "random_state": 1}).fit(X).channel_index_
    b = PaDiMDetector(**{**TINY, "random_state": 1}).fit(X).channel_index_
    c = PaDiMDetector(**{**TINY, "random_state": 2}).fit(X).channel_index_
    assert len(a) == 16 and len(set(a.tolist())) == 16 and np.all(np.diff(a) > 0)
    assert np.all(a < 24 + 32 + 48)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    every = PaDiMDetector(**{**TINY, "n_features": None}).fit(X).channel_index_
    np.testing.assert_array_equal(every, np.arange(104))


def test_auto_offset_is_the_tukey_fence_of_the_unlabelled_scores(images):
    X, is_anomaly, _ = images
    y = np.where(is_anomaly, -1, 1)
    det = PaDiMDetector(**TINY).fit(X, y)
    scores = -det.score_samples(X[~is_anomaly])
    q1, q3 = np.percentile(scores, [25, 75])
    assert det.offset_ == pytest.approx(-(q3 + 1.5 * (q3 - q1)), rel=1e-5)
    assert np.all(det.predict(X[is_anomaly]) == -1)


def test_too_many_features_raise(images):
    with pytest.raises(ValueError, match=r"n_features=500 exceeds the 104 channels"):
        PaDiMDetector(**{**TINY, "n_features": 500}).fit(images[0])


def test_needs_two_unlabelled_images(images):
    with pytest.raises(ValueError, match="at least 2 unlabelled"):
        PaDiMDetector(**TINY).fit(images[0][:2], [1, -1])


def test_tabular_input_is_refused():
    with pytest.raises(ValueError, match="needs images"):
        PaDiMDetector(**TINY).fit(np.zeros((10, 4)))
