import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from skad.losses import deviation_loss, focal_loss

# Few examples: the suite shares two CPU cores; the properties are simple.
FAST = settings(max_examples=30, deadline=None)

finite_scores = st.floats(-50, 50, allow_nan=False, width=64)
unit = st.floats(0, 1, allow_nan=False, width=64)
margins = st.floats(0.01, 20, allow_nan=False, width=64)


@st.composite
def score_batches(draw, max_size=16):
    """Scores and soft targets of a common length >= 1 (float64)."""
    n = draw(st.integers(1, max_size))
    scores = draw(st.lists(finite_scores, min_size=n, max_size=n))
    target = draw(st.lists(unit, min_size=n, max_size=n))
    return (
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
    )


def _assert_close(actual, expected, *, rtol=1e-7, atol=1e-12):
    # torch.testing.assert_close costs ~1-20 ms a call, too much inside
    # hypothesis loops; allclose on float64 is all these checks need.
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def _hard(n, value):
    return torch.full((n,), float(value), dtype=torch.float64)


# --------------------------------------------------------------------------
# deviation_loss: closed forms


@pytest.mark.parametrize(
    "score, label, margin, expected",
    [
        (0.0, 0, 5.0, 0.0),  # normal at the reference mean
        (2.0, 0, 5.0, 2.0),  # normal pulled back by |z|
        (-3.0, 0, 5.0, 3.0),  # ... from either side
        (1.0, 1, 5.0, 4.0),  # anomaly short of the margin
        (7.0, 1, 5.0, 0.0),  # anomaly beyond the margin
        (5.0, 1, 5.0, 0.0),  # exactly at the margin
        (-1.0, 1, 10.0, 11.0),
        (2.0, 0.25, 5.0, 0.75 * 2.0 + 0.25 * 3.0),  # soft label
    ],
)
def test_deviation_loss_closed_form(score, label, margin, expected):
    loss = deviation_loss(
        torch.tensor([score]), torch.tensor([label]), margin=margin, analytic_reference=True
    )
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected)


def test_deviation_loss_reductions():
    scores = torch.tensor([0.0, 2.0, 1.0, 7.0])
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    kw = dict(analytic_reference=True)
    per_sample = deviation_loss(scores, target, reduction="none", **kw)
    torch.testing.assert_close(per_sample, torch.tensor([0.0, 2.0, 4.0, 0.0]))
    assert deviation_loss(scores, target, reduction="sum", **kw).item() == pytest.approx(6.0)
    assert deviation_loss(scores, target, **kw).item() == pytest.approx(1.5)


def test_deviation_loss_empty_batch_is_zero():
    scores = torch.zeros(0, requires_grad=True)
    loss = deviation_loss(scores, torch.zeros(0), analytic_reference=True)
    assert loss.item() == 0.0
    loss.backward()


def test_deviation_loss_random_reference_close_to_analytic():
    scores = torch.linspace(-3, 8, 12, dtype=torch.float64)
    target = (torch.arange(12) % 2).double()
    analytic = deviation_loss(scores, target, analytic_reference=True)
    drawn = deviation_loss(scores, target, generator=torch.Generator().manual_seed(0))
    # 5000 N(0, 1) draws: mean and std within a few percent of (0, 1).
    assert drawn.item() == pytest.approx(analytic.item(), rel=0.05)
    assert drawn.item() != analytic.item()


def test_deviation_loss_same_seed_same_loss_and_seeds_differ():
    scores = torch.linspace(-2, 6, 10)
    target = (torch.arange(10) > 4).float()

    def loss(seed):
        return deviation_loss(scores, target, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(loss(3), loss(3))
    assert not torch.equal(loss(3), loss(4))


def test_deviation_loss_global_generator_respects_manual_seed():
    scores, target = torch.tensor([0.5, 3.0]), torch.tensor([0.0, 1.0])
    torch.manual_seed(11)
    first = deviation_loss(scores, target)
    torch.manual_seed(11)
    assert torch.equal(first, deviation_loss(scores, target))


def test_deviation_loss_reference_independent_of_score_dtype():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    scores, target = torch.tensor([0.5, 3.0]), torch.tensor([0.0, 1.0])
    single = deviation_loss(scores, target, generator=gen())
    double = deviation_loss(scores.double(), target, generator=gen())
    assert double.dtype == torch.float64
    assert double.item() == pytest.approx(single.item(), rel=1e-6)


def test_deviation_loss_accepts_integer_and_bool_targets():
    scores = torch.tensor([2.0, 1.0])
    expected = torch.tensor([2.0, 4.0])
    for target in (torch.tensor([0, 1]), torch.tensor([False, True])):
        out = deviation_loss(scores, target, analytic_reference=True, reduction="none")
        torch.testing.assert_close(out, expected)


def test_deviation_loss_gradients():
    scores = torch.tensor([2.0, -1.0, 1.0, 7.0], requires_grad=True)
    target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    deviation_loss(scores, target, analytic_reference=True, reduction="sum").backward()
    # d|z|/ds = sign(s) for normals, -1 for an anomaly short of the margin,
    # 0 for an anomaly beyond it.
    torch.testing.assert_close(scores.grad, torch.tensor([1.0, -1.0, -1.0, 0.0]))


def test_deviation_loss_gradients_with_drawn_reference():
    scores = torch.tensor([2.0, 1.0], requires_grad=True)
    loss = deviation_loss(
        scores, torch.tensor([0.0, 1.0]), generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad != 0).all()
    assert scores.grad[0] > 0 > scores.grad[1]


# --------------------------------------------------------------------------
# deviation_loss: properties


@FAST
@given(score_batches(), margins)
def test_deviation_loss_non_negative_and_finite(batch, margin):
    scores, target = batch
    for kw in ({"analytic_reference": True}, {"generator": torch.Generator().manual_seed(0)}):
        loss = deviation_loss(scores, target, margin=margin, reduction="none", **kw)
        assert loss.shape == scores.shape
        assert torch.isfinite(loss).all()
        assert (loss >= 0).all()


@FAST
@given(st.integers(1, 16), margins)
def test_deviation_loss_zero_for_normals_at_reference_mean(n, margin):
    loss = deviation_loss(
        torch.zeros(n, dtype=torch.float64), _hard(n, 0), margin=margin, analytic_reference=True
    )
    assert loss.item() == 0.0


@FAST
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=16), margins)
def test_deviation_loss_anomaly_beyond_margin_costs_nothing(excess, margin):
    scores = margin + torch.tensor(excess, dtype=torch.float64)
    loss = deviation_loss(scores, _hard(len(excess), 1), margin=margin, analytic_reference=True)
    assert loss.item() == 0.0


@FAST
@given(score_batches(), margins)
def test_deviation_loss_soft_labels_interpolate_linearly(batch, margin):
    scores, q = batch
    kw = dict(margin=margin, analytic_reference=True, reduction="none")
    normal = deviation_loss(scores, torch.zeros_like(q), **kw)
    anomaly = deviation_loss(scores, torch.ones_like(q), **kw)
    soft = deviation_loss(scores, q, **kw)
    _assert_close(soft, (1 - q) * normal + q * anomaly)


@FAST
@given(score_batches(), st.integers(0, 2**31))
def test_deviation_loss_soft_interpolation_with_drawn_reference(batch, seed):
    scores, q = batch
    kw = dict(reduction="none")

    def loss(target):
        return deviation_loss(scores, target, generator=torch.Generator().manual_seed(seed), **kw)

    normal, anomaly, soft = loss(torch.zeros_like(q)), loss(torch.ones_like(q)), loss(q)
    _assert_close(soft, (1 - q) * normal + q * anomaly)


@FAST
@given(finite_scores, st.floats(0, 20, allow_nan=False), margins)
def test_deviation_loss_anomaly_non_increasing_in_score(score, step, margin):
    kw = dict(margin=margin, analytic_reference=True)
    target = _hard(1, 1)
    low = deviation_loss(torch.tensor([score], dtype=torch.float64), target, **kw)
    high = deviation_loss(torch.tensor([score + step], dtype=torch.float64), target, **kw)
    assert high.item() <= low.item()


@FAST
@given(finite_scores, st.floats(0, 20, allow_nan=False))
def test_deviation_loss_normal_non_decreasing_in_distance(score, step):
    kw = dict(analytic_reference=True)
    target = _hard(1, 0)
    near = deviation_loss(torch.tensor([score], dtype=torch.float64), target, **kw)
    away = score + math.copysign(step, score)
    far = deviation_loss(torch.tensor([away], dtype=torch.float64), target, **kw)
    assert far.item() >= near.item()


@FAST
@given(score_batches(), margins, st.floats(0, 20, allow_nan=False))
def test_deviation_loss_non_decreasing_in_margin(batch, margin, step):
    scores, target = batch
    kw = dict(analytic_reference=True, reduction="none")
    small = deviation_loss(scores, target, margin=margin, **kw)
    large = deviation_loss(scores, target, margin=margin + step, **kw)
    assert (large >= small).all()


@FAST
@given(score_batches())
def test_deviation_loss_gradient_flows(batch):
    scores, q = batch
    hard = (q > 0.5).double()
    for target in (q, hard):
        leaf = scores.clone().requires_grad_(True)
        deviation_loss(leaf, target, analytic_reference=True, reduction="sum").backward()
        assert torch.isfinite(leaf.grad).all()
    # With hard labels the gradient is known exactly: sign(s) for normals,
    # -1 for anomalies short of the margin, 0 beyond it.
    expected = torch.where(hard == 0, torch.sign(scores), -(scores < 5).double())
    _assert_close(leaf.grad, expected)


# --------------------------------------------------------------------------
# deviation_loss: validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": torch.tensor([0.0, 1.5])}, r"'target'.*\[0, 1\]"),
        ({"target": torch.tensor([-1.0, 1.0])}, r"'target'.*\[0, 1\]"),
        ({"target": torch.tensor([float("nan"), 1.0])}, r"'target'.*\[0, 1\]"),
        ({"target": torch.tensor([0.0, 1.0, 1.0])}, r"'target'.*same shape"),
        ({"margin": 0.0}, r"'margin'.*> 0"),
        ({"margin": -5.0}, r"'margin'.*> 0"),
        ({"reduction": "max"}, r"'reduction'.*one of"),
        ({"n_reference": 1}, r"'n_reference'.*>= 2"),
        ({"n_reference": 10.0}, r"'n_reference'.*>= 2"),
    ],
)
def test_deviation_loss_validation(kwargs, match):
    args = {"target": torch.tensor([0.0, 1.0])}
    args.update(kwargs)
    target = args.pop("target")
    with pytest.raises(ValueError, match=match):
        deviation_loss(torch.tensor([0.0, 1.0]), target, **args)


def test_deviation_loss_rejects_non_float_scores():
    with pytest.raises(TypeError, match=r"'scores'.*floating-point"):
        deviation_loss(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"'target'.*torch.Tensor"):
        deviation_loss(torch.tensor([0.0, 1.0]), [0, 1])


# --------------------------------------------------------------------------
# focal_loss


def test_focal_loss_closed_form():
    logits = torch.tensor([0.0, 0.0])
    target = torch.tensor([1.0, 0.0])
    # p_t = 1/2: BCE = log 2, modulating factor (1/2)^gamma.
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(math.log(2))
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(math.log(2) / 4)
    weighted = focal_loss(logits, target, gamma=2.0, alpha=0.25, reduction="none")
    torch.testing.assert_close(weighted, torch.tensor([0.25, 0.75]) * math.log(2) / 4)


def test_focal_loss_segmentation_shape_and_reductions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.8).float()
    per_pixel = focal_loss(logits, target, reduction="none")
    assert per_pixel.shape == logits.shape
    torch.testing.assert_close(focal_loss(logits, target), per_pixel.mean())
    torch.testing.assert_close(focal_loss(logits, target, reduction="sum"), per_pixel.sum())


def test_focal_loss_saturated_logits_stay_finite():
    logits = torch.tensor([200.0, -200.0, 200.0, -200.0, 0.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3])
    for gamma in (0.5, 2.0):
        logits.grad = None
        loss = focal_loss(logits, target, gamma=gamma, reduction="none")
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
        # Confidently right costs nothing; confidently wrong costs ~ |logit|.
        assert loss[0].item() == 0.0 and loss[1].item() == 0.0
        assert loss[2].item() == pytest.approx(200.0)


@st.composite
def logit_batches(draw):
    n = draw(st.integers(1, 16))
    logits = draw(st.lists(st.floats(-30, 30, allow_nan=False, width=64), min_size=n, max_size=n))
    target = draw(st.lists(unit, min_size=n, max_size=n))
    return (
        torch.tensor(logits, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
    )


@FAST
@given(logit_batches())
def test_focal_loss_gamma_zero_equals_bce(batch):
    logits, target = batch
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    _assert_close(focal_loss(logits, target, gamma=0.0, reduction="none"), bce)


@FAST
@given(logit_batches(), st.floats(0.01, 5, allow_nan=False), st.none() | unit)
def test_focal_loss_bounded_by_bce_and_non_negative(batch, gamma, alpha):
    logits, target = batch
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="none")
    assert torch.isfinite(focal).all()
    assert (focal >= 0).all()
    assert (focal <= bce + 1e-12).all()


@FAST
@given(logit_batches(), st.floats(0, 5, allow_nan=False))
def test_focal_loss_matches_reference_formula(batch, gamma):
    logits, target = batch
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = bce * (1 - p_t) ** gamma
    got = focal_loss(logits, target, gamma=gamma, reduction="none")
    _assert_close(got, expected, rtol=1e-6, atol=1e-9)


@FAST
@given(logit_batches(), st.floats(0, 5, allow_nan=False))
def test_focal_loss_gradient_flows(batch, gamma):
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    focal_loss(logits, target, gamma=gamma, reduction="sum").backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_gradient_non_zero_when_wrong():
    logits = torch.tensor([-2.0, 2.0], requires_grad=True)
    focal_loss(logits, torch.tensor([1.0, 0.0])).backward()
    assert logits.grad[0] < 0 < logits.grad[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": torch.tensor([0.0, 2.0])}, r"'target'.*\[0, 1\]"),
        ({"target": torch.zeros(3)}, r"'target'.*same shape"),
        ({"gamma": -1.0}, r"'gamma'.*>= 0"),
        ({"alpha": 1.5}, r"'alpha'.*\[0, 1\]"),
        ({"reduction": None}, r"'reduction'.*one of"),
    ],
)
def test_focal_loss_validation(kwargs, match):
    args = {"target": torch.tensor([0.0, 1.0])}
    args.update(kwargs)
    target = args.pop("target")
    with pytest.raises(ValueError, match=match):
        focal_loss(torch.tensor([0.0, 1.0]), target, **args)
