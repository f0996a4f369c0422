"""PaDiM's torch pieces: streamed Gaussian statistics, Mahalanobis maps, the module."""

import numpy as np
import pytest
import torch

from skad.nn.backbones import create_feature_extractor
from skad.nn.frozen import PatchEmbedding
from skad.nn.padim import PaDiMModule, PatchGaussianEstimator, mahalanobis


def test_streamed_statistics_equal_numpy_per_position(global_random_seed):
    rng = np.random.RandomState(global_random_seed)
    x = rng.normal(size=(37, 5, 3, 2)) * rng.uniform(0.5, 3, size=(1, 5, 1, 1)) + 10.0
    est = PatchGaussianEstimator()
    for part in np.array_split(x, [4, 5, 20]):  # uneven batches
        est.update(torch.as_tensor(part, dtype=torch.float32))
    mean, cov = est.mean_and_covariance()
    rows = x.reshape(37, 5, 6).transpose(2, 0, 1)  # (positions, samples, features)
    np.testing.assert_allclose(mean.numpy(), rows.mean(axis=1), rtol=1e-5)
    for p in range(6):
        np.testing.assert_allclose(cov[p].numpy(), np.cov(rows[p], rowvar=False),
                                   rtol=1e-4, atol=1e-5)


def test_fit_recovers_a_known_gaussian_and_its_analytic_distance():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    a = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.3, 0.2, 0.7]], dtype=torch.float64)
    sigma = a @ a.T
    samples = mu + torch.randn(20000, 3, generator=g, dtype=torch.float64) @ a.T
    est = PatchGaussianEstimator()
    est.update(samples.float()[:, :, None, None])
    mean, cov = est.mean_and_covariance()
    torch.testing.assert_close(mean[0], mu, atol=0.05, rtol=0)
    torch.testing.assert_close(cov[0], sigma, atol=0.1, rtol=0)

    module = PaDiMModule(torch.nn.Identity(), torch.arange(3))  # no backbone needed here
    module.set_statistics(mu[None], sigma[None], reg_covar=0.01)
    point = torch.tensor([3.0, -1.0, 0.0], dtype=torch.float64)
    delta = point - mu
    expected = torch.sqrt(delta @ torch.linalg.solve(sigma + 0.01 * torch.eye(3), delta))
    got = mahalanobis(point.float()[None, None], module.mean, module.precision)
    torch.testing.assert_close(got[0, 0].double(), expected, atol=1e-4, rtol=1e-4)
    # along a principal axis the distance is |t| / sqrt(lambda + eps)
    eigval, eigvec = torch.linalg.eigh(sigma)
    along = (mu + 2.0 * eigvec[:, 0]).float()
    got = mahalanobis(along[None, None], module.mean, module.precision)[0, 0]
    assert float(got) == pytest.approx(2.0 / float(torch.sqrt(eigval[0] + 0.01)), rel=1e-4)


def test_covariance_needs_two_samples():
    est = PatchGaussianEstimator()
    est.update(torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="at least 2"):
        est.mean_and_covariance()


@pytest.fixture(scope="module")
def embedding():
    extractor = create_feature_extractor("test_efficientnet", pretrained=False,
                                         out_indices=(1, 2, 3))
    return PatchEmbedding(extractor, pool_size=1)


def test_module_scores_are_the_largest_patch_distance(embedding):
    module = PaDiMModule(embedding, torch.tensor([0, 5, 30, 60, 100])).eval()
    assert embedding.channels == 24 + 32 + 48
    est = PatchGaussianEstimator()
    with torch.no_grad():
        est.update(module.select(embedding(torch.rand(12, 3, 32, 32))))
        module.set_statistics(*est.mean_and_covariance())
        scores, dist = module(torch.rand(3, 3, 32, 32))
    assert module.mean.shape == (64, 5) and module.precision.shape == (64, 5, 5)
    assert dist.shape == (3, 8, 8) and torch.isfinite(dist).all()
    torch.testing.assert_close(scores, dist.flatten(1).max(dim=1).values)


@pytest.mark.parametrize("index", [[0, 5, 30, 60, 100], [100, 3, 60, 5, 30, 25, 24],
                                   list(range(104))])
def test_channels_selected_before_upsampling_equal_those_selected_after(embedding, index):
    index = torch.tensor(index)
    x = torch.rand(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    embedding = embedding.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = embedding(x).index_select(1, index)
        got = embedding(x, channel_index=index)
        module = PaDiMModule(embedding, index)
        embedded = module.embed(x)
    # equal up to float32 rounding: vectorised upsampling rounds by channel count
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(embedded, got, rtol=0, atol=0)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_mahalanobis_takes_any_layout():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 6, 7, generator=g)  # (B, d, h, w)
    mean = torch.randn(42, 5, generator=g)
    a = torch.randn(42, 5, 5, generator=g)
    precision = a @ a.transpose(1, 2) + torch.eye(5)
    contiguous = x.flatten(2).permute(2, 0, 1).contiguous()
    expected = mahalanobis(contiguous, mean, precision)
    strided = x.contiguous(memory_format=torch.channels_last).permute(2, 3, 0, 1).reshape(42, 4, 5)
    torch.testing.assert_close(mahalanobis(strided, mean, precision), expected)
    delta = contiguous - mean[:, None]
    brute = torch.einsum("pbi,pij,pbj->pb", delta, precision, delta).sqrt()
    torch.testing.assert_close(expected, brute, rtol=1e-4, atol=1e-5)


def test_module_refuses_another_grid(embedding):
    module = PaDiMModule(embedding, torch.arange(4))
    module.set_statistics(torch.zeros(64, 4), torch.eye(4).expand(64, 4, 4))
    with pytest.raises(ValueError, match="size used in fit"):
        module(torch.rand(1, 3, 64, 64))
