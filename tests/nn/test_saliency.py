"""Gradient saliency, smoothing and normalisation; heads."""

import torch

from skad.nn.heads import DeviationHead, Normalize, topk_mean
from skad.nn.saliency import gaussian_blur, input_gradient_saliency, normalize_maps


def test_saliency_points_at_the_pixels_the_score_depends_on():
    x = torch.rand(2, 3, 32, 32)

    def score(images):
        return (images[:, :, 8:14, 20:26] ** 2).sum(dim=(1, 2, 3))

    maps = input_gradient_saliency(score, x, sigma=1.0)
    assert maps.shape == (2, 32, 32)
    inside = maps[:, 8:14, 20:26].mean()
    outside = maps[:, 20:, :10].mean()
    assert inside > 0.5 and outside < 0.05
    assert not x.requires_grad  # the caller's tensor is left alone


def test_gaussian_blur_keeps_constants_and_spreads_a_peak():
    const = torch.full((1, 20, 20), 3.0)
    assert torch.allclose(gaussian_blur(const, 2.0), const)
    peak = torch.zeros(1, 21, 21)
    peak[0, 10, 10] = 1.0
    blurred = gaussian_blur(peak, 2.0)
    assert blurred[0, 10, 10] < 0.1 and blurred[0, 10, 11] > 0.01
    assert abs(blurred.sum().item() - 1.0) < 1e-5  # far from the border, mass is kept
    assert torch.equal(gaussian_blur(peak, 0.0), peak)


def test_normalize_maps_sends_min_to_zero_and_quantile_to_one():
    maps = torch.arange(100.0).view(1, 10, 10)
    out = normalize_maps(maps, 0.99)
    assert out.min() == 0 and out.max() == 1
    assert torch.allclose(out[0, 0, 1], torch.tensor(1 / 98.01), atol=1e-4)


def test_topk_mean_known_value():
    maps = torch.arange(20.0).view(1, 1, 4, 5)
    assert topk_mean(maps, 0.1).item() == 18.5  # K = floor(2) -> mean(19, 18)
    assert topk_mean(maps, 0.01).item() == 19.0  # K is at least 1


def test_deviation_head_is_non_negative_and_trains():
    head = DeviationHead(4, top_k=0.25)
    feats = torch.randn(3, 4, 6, 6)
    s = head(feats)
    assert s.shape == (3,) and (s >= 0).all()
    s.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_normalize_layer():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(Normalize()(x), x)
    out = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(x)
    assert torch.allclose(out, (x - 0.5) / 0.25)
