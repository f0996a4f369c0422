import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skad.reweighting import instance_weights

# The suite shares two CPU cores with other jobs; these tensors are tiny.

FAST = settings(max_examples=50, deadline=None)

DIVERGENCES = ["kl", "reverse_kl", "alpha"]

loss_values = st.floats(0, 50, allow_nan=False, width=64)
lams = st.floats(1e-3, 10, allow_nan=False, width=64)
alphas = st.floats(0, 0.95, allow_nan=False, width=64)
divergences = st.sampled_from(DIVERGENCES)


@st.composite
def loss_vectors(draw, elements=loss_values, max_size=64):
    values = draw(st.lists(elements, min_size=1, max_size=max_size))
    return torch.tensor(values, dtype=torch.float64)


def _assert_close(actual, expected, *, rtol=1e-10, atol=1e-12):
    # torch.testing.assert_close is slow inside hypothesis loops.
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def _numpy_weights(losses, divergence, lam, alpha=None):
    """The paper's closed forms, evaluated naively (unshifted) in numpy."""
    losses = np.asarray(losses, dtype=np.float64)
    if divergence == "kl":
        w = np.exp(-losses / lam)
    elif divergence == "reverse_kl":
        w = 1.0 / (losses + lam)
    else:
        w = np.maximum((1 - alpha) * losses + lam, 0.0) ** (1.0 / (alpha - 1))
    return torch.from_numpy(w / w.sum())


# Closed forms --------------------------------------------------------------


@pytest.mark.parametrize(
    "divergence, lam, alpha, losses, expected",
    [
        # exp(-l/lam) with l = lam * ln 2: weights 1 and 1/2.
        ("kl", 0.5, None, [0.0, 0.5 * math.log(2)], [2 / 3, 1 / 3]),
        # 1/(l + lam): 1 and 1/2.
        ("reverse_kl", 1.0, None, [0.0, 1.0], [2 / 3, 1 / 3]),
        # alpha = 0.5: base (0.5 l + 1) = 1 and 2, power -2: 1 and 1/4.
        ("alpha", 1.0, 0.5, [0.0, 2.0], [0.8, 0.2]),
    ],
)
def test_closed_form_by_hand(divergence, lam, alpha, losses, expected):
    kwargs = {} if alpha is None else {"alpha": alpha}
    w = instance_weights(
        torch.tensor(losses, dtype=torch.float64), divergence=divergence, lam=lam, **kwargs
    )
    _assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("lam", [0.1, 1.0, 3.0])
def test_closed_form_matches_numpy(divergence, lam):
    losses = [0.3, 0.0, 2.5, 1.0, 0.7, 4.0]
    w = instance_weights(
        torch.tensor(losses, dtype=torch.float64), divergence=divergence, lam=lam, alpha=0.1
    )
    _assert_close(w, _numpy_weights(losses, divergence, lam, alpha=0.1))


def test_default_is_alpha_01_lam_01():
    losses = torch.tensor([0.1, 0.4, 0.2, 1.5], dtype=torch.float64)
    _assert_close(instance_weights(losses), _numpy_weights(losses.numpy(), "alpha", 0.1, alpha=0.1))


def test_none_is_uniform():
    losses = torch.tensor([0.0, 1.0, 30.0])
    w = instance_weights(losses, divergence=None)
    assert torch.equal(w, torch.full((3,), 1 / 3))


def test_kl_weights_minimise_the_objective():
    # KL's closed form is the exact minimiser of sum w*l + lam*KL(w || u) over
    # the simplex: no random simplex point does better.
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(8, generator=gen, dtype=torch.float64) * 3
    lam, n = 0.7, losses.numel()

    def objective(w):
        w = w.clamp_min(1e-300)
        return (w * losses).sum(-1) + lam * (w * torch.log(w * n)).sum(-1)

    best = objective(instance_weights(losses, divergence="kl", lam=lam))
    candidates = torch.distributions.Dirichlet(torch.ones(n, dtype=torch.float64)).sample((2000,))
    assert bool((objective(candidates) >= best - 1e-12).all())


# Properties ----------------------------------------------------------------


@FAST
@given(
    losses=loss_vectors(),
    divergence=divergences,
    lam=lams,
    alpha=alphas,
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_weights_are_a_distribution(losses, divergence, lam, alpha, dtype):
    w = instance_weights(losses.to(dtype), divergence=divergence, lam=lam, alpha=alpha)
    assert w.dtype == dtype and w.shape == losses.shape
    assert bool(torch.isfinite(w).all())
    assert bool((w >= 0).all())
    assert abs(w.double().sum().item() - 1) < 1e-5


@FAST
@given(losses=loss_vectors(), divergence=divergences, lam=lams, alpha=alphas)
def test_weights_non_increasing_in_loss(losses, divergence, lam, alpha):
    w = instance_weights(losses, divergence=divergence, lam=lam, alpha=alpha)
    order = torch.argsort(losses)
    w_sorted = w[order]
    assert bool((w_sorted[1:] <= w_sorted[:-1] + 1e-12).all()), (losses[order], w_sorted)


@FAST
@given(
    value=loss_values,
    n=st.integers(1, 64),
    divergence=divergences,
    lam=lams,
    alpha=alphas,
)
def test_equal_losses_give_uniform_weights(value, n, divergence, lam, alpha):
    losses = torch.full((n,), value, dtype=torch.float64)
    w = instance_weights(losses, divergence=divergence, lam=lam, alpha=alpha)
    _assert_close(w, torch.full((n,), 1 / n, dtype=torch.float64), rtol=1e-12)


@FAST
@given(losses=loss_vectors(elements=st.floats(0, 5, allow_nan=False)), lam=st.floats(0.5, 10))
def test_alpha_to_one_approaches_kl(losses, lam):
    # log-weights differ from KL's by O((1 - alpha) * (L / lam)^2) with L <= 5,
    # lam >= 0.5: about 1e-4 at 1 - alpha = 1e-6.
    near_kl = instance_weights(losses, divergence="alpha", lam=lam, alpha=1 - 1e-6)
    kl = instance_weights(losses, divergence="kl", lam=lam)
    _assert_close(near_kl, kl, rtol=1e-3, atol=1e-10)


@FAST
@given(losses=loss_vectors(), lam=lams)
def test_alpha_zero_equals_reverse_kl(losses, lam):
    assert torch.equal(
        instance_weights(losses, divergence="alpha", lam=lam, alpha=0.0),
        instance_weights(losses, divergence="reverse_kl", lam=lam),
    )


@FAST
@given(
    losses=loss_vectors(),
    divergence=divergences,
    lam=st.floats(1e7, 1e12),
    alpha=alphas,
)
def test_large_lam_is_nearly_uniform(losses, divergence, lam, alpha):
    # Relative deviation from 1/B is at most ~ max(l) / ((1 - alpha) * lam) <= 1e-4.
    n = losses.numel()
    w = instance_weights(losses, divergence=divergence, lam=lam, alpha=alpha)
    _assert_close(w, torch.full((n,), 1 / n, dtype=torch.float64), rtol=1e-4, atol=0)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_infinite_lam_is_uniform(divergence):
    w = instance_weights(torch.tensor([0.0, 1.0, 40.0]), divergence=divergence, lam=math.inf)
    assert torch.equal(w, torch.full((3,), 1 / 3))


def test_small_lam_kl_concentrates_on_smallest_loss():
    losses = torch.tensor([3.0, 0.5, 0.51, 2.0], dtype=torch.float64)
    w = instance_weights(losses, divergence="kl", lam=1e-4)
    assert w[1].item() == pytest.approx(1.0) and w[1] == w.max()


@FAST
@given(
    losses=loss_vectors(),
    divergence=divergences,
    lam=lams,
    alpha=alphas,
    data=st.data(),
)
def test_permutation_equivariance(losses, divergence, lam, alpha, data):
    perm = torch.tensor(data.draw(st.permutations(range(losses.numel()))), dtype=torch.long)
    w = instance_weights(losses, divergence=divergence, lam=lam, alpha=alpha)
    w_perm = instance_weights(losses[perm], divergence=divergence, lam=lam, alpha=alpha)
    _assert_close(w_perm, w[perm])


# Numerical stability -------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("lam", [1e-4, 1e-300, 0.1, 1e300])
@pytest.mark.parametrize(
    "losses",
    [
        torch.tensor([0.0, 1e38, 3e38], dtype=torch.float32),
        torch.tensor([1e30, 1e30, 2e30], dtype=torch.float32),
        torch.tensor([0.0, 1e-45, 1e-30, 1.0], dtype=torch.float32),
        torch.tensor([1e300, 0.0, 1e-320], dtype=torch.float64),
        torch.tensor([1e300, 1e300 * (1 + 1e-15)], dtype=torch.float64),
        torch.tensor([5.0, 1000.0, 5.0001], dtype=torch.float16),
    ],
    ids=["huge-f32", "all-huge-f32", "tiny-f32", "extreme-f64", "huge-close-f64", "f16"],
)
def test_extreme_inputs_give_finite_distribution(losses, divergence, lam):
    w = instance_weights(losses, divergence=divergence, lam=lam, alpha=0.5)
    assert w.dtype == losses.dtype
    assert bool(torch.isfinite(w).all()) and bool((w >= 0).all())
    tol = 1e-2 if losses.dtype == torch.float16 else 1e-5
    assert abs(w.double().sum().item() - 1) < tol
    # The smallest loss always keeps the largest weight.
    assert w[torch.argmin(losses)] == w.max()


def test_large_losses_kl_does_not_underflow_to_nan():
    # Naive exp(-l / lam) is 0 for every sample here; the shifted form is not.
    losses = torch.tensor([1000.0, 1000.1, 1001.0])
    w = instance_weights(losses, divergence="kl", lam=0.1)
    expected = torch.softmax(-(losses.double() - 1000.0) / 0.1, 0)
    assert expected[-1] > 1e-5
    _assert_close(w.double(), expected, rtol=1e-6, atol=1e-8)


# Autograd, dtype and device ------------------------------------------------


@pytest.mark.parametrize("divergence", [*DIVERGENCES, None])
def test_no_gradient_flows_into_weights(divergence):
    x = torch.tensor([0.2, 1.0, 3.0], requires_grad=True)
    losses = x**2
    w = instance_weights(losses, divergence=divergence)
    assert not w.requires_grad and w.grad_fn is None
    # The weighted loss still backpropagates through the losses only.
    (w * losses).sum().backward()
    _assert_close(x.grad, 2 * x.detach() * w, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("divergence", [*DIVERGENCES, None])
def test_dtype_and_device_preserved(dtype, divergence):
    losses = torch.tensor([0.0, 0.5, 2.0], dtype=dtype)
    w = instance_weights(losses, divergence=divergence)
    assert w.dtype == dtype and w.device == losses.device and w.shape == (3,)


def test_float32_matches_float64():
    losses = torch.tensor([0.3, 0.0, 2.5, 1.0], dtype=torch.float64)
    for divergence in DIVERGENCES:
        w64 = instance_weights(losses, divergence=divergence)
        w32 = instance_weights(losses.float(), divergence=divergence)
        _assert_close(w32.double(), w64, rtol=1e-6, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("divergence", [*DIVERGENCES, None])
def test_cuda_device_preserved(divergence):
    losses = torch.tensor([0.0, 0.5, 2.0], device="cuda")
    w = instance_weights(losses, divergence=divergence)
    assert w.device == losses.device and w.dtype == losses.dtype
    _assert_close(w.cpu(), instance_weights(losses.cpu(), divergence=divergence), rtol=1e-6)


# Validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "losses",
    [
        torch.tensor([0.1, -0.2]),
        torch.tensor([0.1, math.nan]),
        torch.tensor([math.inf, 0.0]),
    ],
)
@pytest.mark.parametrize("divergence", [*DIVERGENCES, None])
def test_invalid_loss_values(losses, divergence):
    with pytest.raises(ValueError, match="'losses' parameter.*finite, non-negative"):
        instance_weights(losses, divergence=divergence)


@pytest.mark.parametrize(
    "losses", [torch.tensor([]), torch.tensor(1.0), torch.zeros(2, 3)], ids=["empty", "0d", "2d"]
)
def test_invalid_loss_shape(losses):
    with pytest.raises(ValueError, match="'losses' parameter.*non-empty 1-D"):
        instance_weights(losses)


@pytest.mark.parametrize("losses", [[0.1, 0.2], np.array([0.1, 0.2]), torch.tensor([1, 2])])
def test_losses_must_be_float_tensor(losses):
    with pytest.raises(TypeError, match="'losses' parameter.*floating-point torch.Tensor"):
        instance_weights(losses)


@pytest.mark.parametrize("lam", [0, -1.0, math.nan, None, "0.1", True])
@pytest.mark.parametrize("divergence", [*DIVERGENCES, None])
def test_invalid_lam(lam, divergence):
    with pytest.raises(ValueError, match="'lam' parameter.*> 0"):
        instance_weights(torch.tensor([0.1]), divergence=divergence, lam=lam)


@pytest.mark.parametrize("alpha", [1.0, 1.5, -0.1, math.nan, None, False])
def test_invalid_alpha(alpha):
    with pytest.raises(ValueError, match=r"'alpha' parameter.*\[0, 1\).*divergence='kl'"):
        instance_weights(torch.tensor([0.1]), divergence="alpha", alpha=alpha)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", None])
def test_alpha_ignored_by_other_divergences(divergence):
    w = instance_weights(torch.tensor([0.0, 1.0]), divergence=divergence, alpha=1.0)
    assert abs(w.sum().item() - 1) < 1e-6


@pytest.mark.parametrize("divergence", ["KL", "js", "", 1, "uniform"])
def test_invalid_divergence(divergence):
    with pytest.raises(ValueError, match="'divergence' parameter.*one of"):
        instance_weights(torch.tensor([0.1]), divergence=divergence)
