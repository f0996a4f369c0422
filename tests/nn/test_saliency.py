"""Gradient saliency; heads."""

import pytest
import torch
from torch import nn

from skad.nn.heads import DeviationHead, Normalize, topk_mean
from skad.nn.saliency import gradient_saliency, input_gradient_saliency


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


class _TwoCueNet(nn.Module):
    """Cue 0 reads the top-left 8x8 pixels through an encoder, cue 1 the bottom-right ones."""

    def __init__(self, scales=(1,)):
        super().__init__()
        self.encoder = nn.AvgPool2d(4)  # 32 px -> 8 cells of 4 px
        self.scales = scales

    def forward(self, x):
        c0 = 0
        for scale in self.scales:
            cells = self.encoder(x if scale == 1 else x.repeat_interleave(scale, -1)
                                 .repeat_interleave(scale, -2))
            c0 = c0 + cells[:, :, :2, :2].sum(dim=(1, 2, 3))
        c1 = (x[:, :, 24:, 24:] ** 2).sum(dim=(1, 2, 3))  # bypasses the encoder
        return torch.stack([c0, c1], dim=1)


def test_gradient_saliency_averages_input_and_per_cue_feature_maps():
    x = torch.rand(3, 3, 32, 32) * 0.5 + 0.5
    net = _TwoCueNet()
    maps = gradient_saliency(net, x, layer=net.encoder, sigma=0)
    # input map: |d(c0 + c1)/dx| summed over channels is 3/16 top-left, 6x in [3, 6]
    # bottom-right (normalised: below 0.07 and about 1); feature map of c0: 1 on the
    # top-left 2x2 cells (upsampled: 1 up to pixel 5); of c1: none (all zeros)
    top_left, bottom_right = maps[:, :6, :6], maps[:, 25:, 25:]
    background = maps[:, 12:20, :]
    assert background.max() == 0
    assert torch.allclose(top_left, torch.full_like(top_left, 1 / 3), atol=0.025)
    assert bottom_right.mean() > 0.25 and bottom_right.max() <= 1 / 3 + 1e-6
    only_input = gradient_saliency(net, x, sigma=0)
    assert only_input[:, 1:7, 1:7].max() < 0.1 and only_input[:, 25:, 25:].mean() > 0.75


def test_gradient_saliency_is_per_image_and_leaves_the_input_alone():
    x = torch.rand(4, 3, 32, 32)
    net = _TwoCueNet()
    together = gradient_saliency(net, x, layer=net.encoder)
    alone = gradient_saliency(net, x[2:3], layer=net.encoder)
    assert torch.allclose(together[2:3], alone, atol=1e-6)
    assert not x.requires_grad


def test_gradient_saliency_adds_the_maps_of_a_layer_run_twice():
    x = torch.rand(2, 3, 32, 32)
    once = gradient_saliency(_TwoCueNet(), x, layer=None, sigma=0)
    net = _TwoCueNet(scales=(1, 2))
    twice = gradient_saliency(net, x, layer=net.encoder, sigma=0)
    assert twice.shape == once.shape and torch.isfinite(twice).all()
    assert twice[:, :4, :4].mean() > twice[:, 12:20, :].mean()


def test_gradient_saliency_needs_the_layer_to_run():
    with pytest.raises(ValueError, match="did not run"):
        gradient_saliency(_TwoCueNet(), torch.rand(1, 3, 32, 32), layer=nn.Identity())


def test_input_gradient_saliency_is_the_one_cue_case():
    x = torch.rand(2, 3, 32, 32)
    net = _TwoCueNet()

    def score(images):
        return net(images)[:, 1]

    assert torch.equal(input_gradient_saliency(score, x, sigma=2.0),
                       gradient_saliency(score, x, sigma=2.0))


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
