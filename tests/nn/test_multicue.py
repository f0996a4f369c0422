"""Multi-Cue's pure-torch scoring: squash, squashed cues, raw cues, fusion, soft targets."""

import math

import pytest
import torch

from skad.nn.multicue import fuse_cues, raw_cues, soft_anomaly_labels, squash, squashed_cues

E_MAX = math.log1p(math.log(2))


def test_squash_maps_zero_to_zero_caps_at_one_and_is_monotone():
    x = torch.tensor([0.0, 0.05, 0.5, 1.0, 3.0], dtype=torch.float64)
    out = squash(x, 0.05, 1.0)
    expected = torch.log1p(x.clamp(max=1.0) / 0.05) / math.log(21.0)
    assert torch.allclose(out, expected)
    assert out[0] == 0 and out[3] == 1 and out[4] == 1
    assert out[1] == pytest.approx(math.log(2) / math.log(21))
    assert (out.diff() >= 0).all()


def test_squashed_cues_known_values():
    # (s, H, g): nothing, half-way, saturated
    raw = torch.tensor([[0.0, 0.0, 0.0],
                        [0.05, math.expm1(E_MAX / 10), 0.0025],
                        [2.0, math.log(2), 1.0]], dtype=torch.float64)
    out = squashed_cues(raw)
    half = math.log(2) / math.log(11)  # phi(c; c, D) with D / c = 10
    assert torch.allclose(out[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([math.log(2) / math.log(21), half,
                                                math.log(2) / math.log(21)],
                                               dtype=torch.float64))
    assert torch.allclose(out[2], torch.ones(3, dtype=torch.float64))


def test_squashed_deviation_is_measured_from_the_reference():
    raw = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.2, 0.0, 0.0], [9.0, 0.0, 0.0]],
                       dtype=torch.float64)
    out = squashed_cues(raw, (2.0, 4.0))[:, 0]
    # below the median -> 0; m + 0.05 r -> phi(c; c, D); m + r and above -> 1
    expected = [0.0, 0.0, math.log(2) / math.log(21), 1.0]
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64))


def test_raw_cues_are_deviation_entropy_and_top_decile_of_the_mask():
    deviation = torch.tensor([0.3, 4.0])
    logit = torch.tensor([0.0, 50.0])  # p = 0.5 (H = ln 2), p = 1 (clamped: H ~ 1.5e-5)
    seg = torch.full((2, 1, 10, 10), -1e4)
    seg[0, 0, 0, :10] = 1e4  # 10 of 100 pixels certain: top-10% mean is 1
    seg[1, 0, 0, :5] = 1e4  # 5 of them: 0.5
    raw = raw_cues((deviation, logit, seg))
    assert torch.allclose(raw[:, 0], deviation)
    assert raw[0, 1].item() == pytest.approx(math.log(2))
    assert 0 < raw[1, 1].item() < 2e-5
    assert torch.allclose(raw[:, 2], torch.tensor([1.0, 0.5]))


def test_fusion_is_a_weighted_geometric_mean():
    cues = torch.tensor([[0.64, 0.5, 0.25], [0.3, 0.3, 0.3], [0.9, 0.0, 0.8]],
                        dtype=torch.float64)
    fused = fuse_cues(cues, [0.5, 0.25, 0.25])
    eps = 1e-6
    expected0 = math.exp(0.5 * math.log(0.64 + eps) + 0.25 * math.log(0.5 + eps)
                         + 0.25 * math.log(0.25 + eps))
    assert fused[0].item() == pytest.approx(expected0)
    assert fused[1].item() == pytest.approx(0.3 + eps)  # equal cues: that value
    assert fused[2] < 0.05  # one cue at zero pulls the geometric mean down
    assert torch.allclose(fuse_cues(cues, [2.0, 1.0, 1.0]), fused)  # only ratios matter
    assert torch.allclose(fuse_cues(cues, [1.0, 0.0, 0.0]), cues[:, 0] + eps)


def test_soft_labels_of_the_batch_deviation_scores():
    s = torch.tensor([1.0, 3.0, 5.0])
    u = soft_anomaly_labels(s)
    sig = torch.sigmoid
    expected = 0.95 * sig(torch.tensor([-2.5, 0.0, 2.5]))
    assert torch.allclose(u, expected)
    assert torch.allclose(soft_anomaly_labels(torch.full((4,), 2.0)),
                          torch.full((4,), 0.95 * sig(torch.tensor(-2.5)).item()))
