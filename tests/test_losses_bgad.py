"""BGAD's objective: the boundary-guided semi-push-pull loss and the per-level criterion."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skad.losses import BGADLoss, bgspp_loss
from skad.reweighting import instance_weights

FAST = settings(max_examples=40, deadline=None)
values = st.lists(st.floats(-2, 1, allow_nan=False, width=64), min_size=0, max_size=12)


def test_bgspp_closed_form():
    normal = torch.tensor([-0.5, -0.2, 0.3, -1.5])  # below b_n by 0.3, 0; above; below -1
    anomalous = torch.tensor([-0.2, -0.35, -0.45, -3.0])  # above b_a by 0.15, 0.0; below
    loss = bgspp_loss(normal, anomalous, boundary=-0.2, margin=0.15, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.3, 0.0, 0.0, 0.0, 0.15, 0.0, 0.0, 0.0]))
    assert bgspp_loss(normal, anomalous, boundary=-0.2, margin=0.15) == pytest.approx(0.45 / 8)
    assert bgspp_loss(normal, anomalous, boundary=-0.2, margin=0.15,
                      reduction="sum") == pytest.approx(0.45)


def test_bgspp_empty_batches_cost_nothing():
    empty = torch.zeros(0)
    assert bgspp_loss(empty, empty, boundary=0.0).item() == 0.0


@FAST
@given(values, values, st.floats(-1, 0, width=64), st.floats(0, 0.5, width=64))
def test_bgspp_is_non_negative_and_zero_on_the_right_sides(normal, anomalous, b, tau):
    # "zero" up to the rounding of b - tau
    n, a = torch.tensor(normal, dtype=torch.float64), torch.tensor(anomalous, dtype=torch.float64)
    loss = bgspp_loss(n, a, boundary=b, margin=tau, reduction="sum")
    assert loss >= 0
    on_side = bgspp_loss(n.clamp_min(b), a.clamp_max(b - tau), boundary=b, margin=tau,
                         reduction="sum")
    assert on_side <= 1e-12


@FAST
@given(values, st.floats(-1, 0, width=64), st.floats(0, 0.5, width=64),
       st.floats(0, 0.5, width=64))
def test_bgspp_is_non_decreasing_in_the_margin(anomalous, b, tau, extra):
    a = torch.tensor(anomalous, dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.float64)
    small = bgspp_loss(empty, a, boundary=b, margin=tau, reduction="sum")
    large = bgspp_loss(empty, a, boundary=b, margin=tau + extra, reduction="sum")
    assert large >= small - 1e-12


def test_bgspp_validation():
    with pytest.raises(TypeError, match="'normal'"):
        bgspp_loss([0.1], torch.zeros(1), boundary=0.0)
    with pytest.raises(ValueError, match="'margin'"):
        bgspp_loss(torch.zeros(1), torch.zeros(1), boundary=0.0, margin=-1)


def _batch():
    g = torch.Generator().manual_seed(0)
    ll = torch.randn(3, 10, generator=g, dtype=torch.float64) * 2
    codes = torch.zeros(3, 10, dtype=torch.long)
    codes[1, :4] = 1  # masked cells
    codes[2] = 2  # a mask-less labelled anomaly: candidates
    return ll, codes


def test_phase_one_is_maximum_likelihood_per_image():
    ll, codes = _batch()
    loss = BGADLoss(boundary_start=0.5)
    loss.progress = 0.4
    per_image = torch.stack([-ll[0].mean(), -ll[1, 4:].mean()])
    torch.testing.assert_close(loss((ll,), (codes,)), per_image.mean())
    # levels are summed
    torch.testing.assert_close(loss((ll, ll), (codes, codes)), 2 * per_image.mean())


def test_phase_two_adds_the_boundary_loss_with_multiple_instances():
    ll, codes = _batch()
    loss = BGADLoss(boundary_start=0.5, alpha_n=10.0, beta=0.2, margin=0.1, lam=2.0,
                    anomaly_top_k=0.3)
    loss.progress = 0.6
    s = ll / 10.0
    normal = torch.cat([s[0], s[1, 4:]])
    boundary = torch.quantile(normal, 0.2)
    # the 3 least likely candidates of image 2 join the masked cells of image 1
    picked = s[2].sort().values[:3]
    anomalous = torch.cat([s[1, :4], picked])
    ml = torch.stack([-ll[0].mean(), -ll[1, 4:].mean()]).mean()
    expected = ml + 2.0 * bgspp_loss(normal, anomalous, boundary=boundary, margin=0.1)
    torch.testing.assert_close(loss((ll,), (codes,)), expected)


def test_reweighting_down_weights_the_least_likely_image():
    ll = torch.tensor([[1.0, 1.0], [0.9, 1.1], [-5.0, -5.0]], dtype=torch.float64)
    codes = torch.zeros(3, 2, dtype=torch.long)
    uniform = BGADLoss(boundary_start=0.0, lam=0.0)
    weighted = BGADLoss(boundary_start=0.0, lam=0.0, divergence="kl", reweight_lam=1.0)
    uniform.progress = weighted.progress = 0.5
    assert weighted((ll,), (codes,)) < uniform((ll,), (codes,))
    nll = torch.tensor([-1.0, -1.0, 5.0], dtype=torch.float64)
    w = instance_weights(nll - nll.min(), divergence="kl", lam=1.0)
    torch.testing.assert_close(weighted((ll,), (codes,)), (w * nll).sum())


def test_gradients_reach_every_used_log_likelihood():
    ll, codes = _batch()
    ll.requires_grad_(True)
    loss = BGADLoss(boundary_start=0.0, beta=0.5, margin=0.5)
    loss.progress = 0.5
    loss((ll,), (codes,)).backward()
    assert torch.isfinite(ll.grad).all()
    assert (ll.grad[0] != 0).all()  # normal vectors: maximum likelihood
    assert (ll.grad[2] != 0).sum() == math.ceil(0.1 * 10)  # only the picked candidate
