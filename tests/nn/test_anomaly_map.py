"""Anomaly maps: upsampling, smoothing, normalisation."""

import torch
import torch.nn.functional as F

from skad.nn.anomaly_map import gaussian_blur, normalize_maps, smoothed_map, upsample_maps


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


def test_normalize_maps_zeroes_maps_flat_up_to_rounding():
    flat = torch.full((1, 8, 8), 3e-4)
    flat[0, 2, 3] += 1e-12  # rounding noise must not be stretched to [0, 1]
    assert normalize_maps(flat).max() < 1e-3


def test_upsample_maps_is_bilinear_without_corner_alignment():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out = upsample_maps(maps, (4, 4))
    assert out.shape == (1, 4, 4)
    expected = F.interpolate(maps[:, None], size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected[:, 0])
    assert out[0, 0, 0] == 0.0 and out[0, -1, -1] == 3.0  # corners keep the corner cells
    torch.testing.assert_close(upsample_maps(maps, (2, 2)), maps)


def test_smoothed_map_upsamples_then_smooths():
    maps = torch.zeros(2, 4, 4)
    maps[1, 1, 2] = 1.0
    out = smoothed_map(maps, (16, 16), 2.0)
    torch.testing.assert_close(out, gaussian_blur(upsample_maps(maps, (16, 16)), 2.0))
    assert out[0].abs().max() == 0 and out[1].argmax() // 16 in (5, 6)
