"""DRA's objective: per-head deviation losses with the paper's routing, and reweighting."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skad.losses import DRA_ROUTES, DRALoss, deviation_loss, dra_loss
from skad.nn.outputs import DRAOutput

FAST = settings(max_examples=30, deadline=None)
HEADS = tuple(DRA_ROUTES)
margins = st.floats(0.01, 20, allow_nan=False, width=64)


@st.composite
def batches(draw, max_size=12):
    """Codes in {0, 1, 2} and non-negative scores of every head (float64)."""
    n = draw(st.integers(1, max_size))
    codes = torch.tensor(draw(st.lists(st.sampled_from([0, 1, 2]), min_size=n, max_size=n)))
    heads = {name: torch.tensor(draw(st.lists(st.floats(0, 30, allow_nan=False, width=64),
                                              min_size=n, max_size=n)), dtype=torch.float64)
             for name in HEADS}
    return heads, codes


def _analytic(heads, codes, **kw):
    return dra_loss(heads, codes, analytic_reference=True, **kw)


# ------------------------------------------------------------------ closed forms
def test_closed_form_with_every_head():
    # rows: unlabelled, seen anomaly, pseudo-anomaly; margin 5, analytic reference
    codes = torch.tensor([0, 1, 2])
    heads = {"seen": torch.tensor([1.0, 2.0, 100.0]),        # rows 0, 1: (1 + 3) / 2
             "pseudo": torch.tensor([0.5, 100.0, 6.0]),      # rows 0, 2: (0.5 + 0) / 2
             "residual": torch.tensor([2.0, 4.0, 1.0]),      # all: (2 + 1 + 4) / 3
             "normality": torch.tensor([3.0, 1.0, 0.0])}     # all, reversed: (2 + 1 + 0) / 3
    loss = _analytic(heads, codes)
    assert loss.item() == pytest.approx(2.0 + 0.25 + 7 / 3 + 1.0)


def test_equals_deviation_loss_per_head_on_its_rows_with_the_same_draws():
    gen = torch.Generator().manual_seed(0)
    codes = torch.tensor([0, 0, 1, 2, 0, 2, 1, 0])
    heads = {h: torch.rand(8, generator=gen) * 6 for h in HEADS}
    loss = dra_loss(heads, codes, generator=torch.Generator().manual_seed(3))
    ref_gen, expected = torch.Generator().manual_seed(3), 0.0
    for name, (trained_on, anomalous) in DRA_ROUTES.items():
        rows = torch.isin(codes, torch.tensor(trained_on))
        target = torch.isin(codes[rows], torch.tensor(anomalous)).float()
        expected += deviation_loss(heads[name][rows], target, generator=ref_gen)
    torch.testing.assert_close(loss, expected)


def test_routing_of_each_head():
    codes = torch.tensor([0, 1, 2])
    base = {h: torch.tensor([1.0, 2.0, 3.0]) for h in HEADS}
    for name, (trained_on, _) in DRA_ROUTES.items():
        for row in range(3):
            changed = {h: s.clone() for h, s in base.items()}
            changed[name][row] += 10.0
            same = torch.equal(_analytic(changed, codes), _analytic(base, codes))
            assert same == (row not in trained_on), (name, row)


def test_a_head_without_routed_rows_adds_a_connected_zero():
    scores = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = _analytic({"seen": scores}, torch.tensor([2, 2]))  # only pseudo-anomalies
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(2))


def test_sample_weights_weight_the_mean_of_each_head():
    codes = torch.tensor([0, 0, 1])
    heads = {"seen": torch.tensor([1.0, 3.0, 5.0])}  # losses 1, 3, 0
    weights = torch.tensor([3.0, 1.0, 1.0])
    assert _analytic(heads, codes, sample_weights=weights).item() == pytest.approx(6 / 5)


def test_gradient_flows_into_every_head():
    codes = torch.tensor([0, 1, 2, 0])
    heads = {h: torch.tensor([1.0, 2.0, 3.0, 0.5], requires_grad=True) for h in HEADS}
    dra_loss(heads, codes, generator=torch.Generator().manual_seed(0)).backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads.values())


@pytest.mark.parametrize(
    "heads, codes, weights, match",
    [
        ({}, torch.tensor([0]), None, "'heads'"),
        ({"typo": torch.zeros(1)}, torch.tensor([0]), None, "'heads'"),
        ({"seen": torch.zeros(2)}, torch.tensor([0]), None, "shaped like 'codes'"),
        ({"seen": torch.zeros(2)}, torch.tensor([0, 3]), None, "'codes'.*only 0"),
        ({"seen": torch.zeros(2)}, torch.tensor([0, -1]), None, r"\(1 - y\) // 2"),
        ({"seen": torch.zeros(2)}, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]),
         "'sample_weights'"),
        ({"seen": torch.zeros(2)}, torch.tensor([0, 1]), torch.ones(3), "'sample_weights'"),
    ],
)
def test_bad_arguments_are_named(heads, codes, weights, match):
    with pytest.raises(ValueError, match=match):
        dra_loss(heads, codes, sample_weights=weights)


def test_integer_scores_and_codes_that_are_not_tensors_are_type_errors():
    with pytest.raises(TypeError, match="heads\\['seen'\\]"):
        dra_loss({"seen": torch.tensor([1, 2])}, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="'codes'"):
        dra_loss({"seen": torch.zeros(2)}, [0, 1])


# ------------------------------------------------------------------ properties
@FAST
@given(batches(), margins)
def test_non_negative_and_finite(batch, margin):
    heads, codes = batch
    loss = _analytic(heads, codes, margin=margin)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() >= 0


@FAST
@given(batches(), margins, st.floats(0, 20, allow_nan=False, width=64))
def test_zero_when_every_head_meets_its_target(batch, margin, excess):
    # normals at 0 on the abnormality heads and beyond the margin on the normality head;
    # anomalies beyond the margin on their abnormality heads and at 0 on the normality head
    _, codes = batch
    normal = codes == 0
    beyond = torch.full(codes.shape, margin + excess, dtype=torch.float64)
    zero = torch.zeros(codes.shape, dtype=torch.float64)
    heads = {h: torch.where(normal, zero, beyond) for h in ("seen", "pseudo", "residual")}
    heads["normality"] = torch.where(normal, beyond, zero)
    assert _analytic(heads, codes, margin=margin).item() == 0.0


@FAST
@given(batches(), margins, st.floats(0, 20, allow_nan=False, width=64))
def test_non_decreasing_in_margin(batch, margin, step):
    heads, codes = batch
    small = _analytic(heads, codes, margin=margin)
    large = _analytic(heads, codes, margin=margin + step)
    assert large.item() >= small.item() - 1e-12


@FAST
@given(batches(), st.randoms(use_true_random=False))
def test_invariant_to_the_order_of_the_batch(batch, rnd):
    heads, codes = batch
    order = list(range(len(codes)))
    rnd.shuffle(order)
    order = torch.tensor(order)
    shuffled = {h: s[order] for h, s in heads.items()}
    torch.testing.assert_close(_analytic(shuffled, codes[order]), _analytic(heads, codes))


@FAST
@given(batches(), st.floats(0.01, 100, allow_nan=False, width=64))
def test_uniform_weights_of_any_size_change_nothing(batch, scale):
    heads, codes = batch
    weights = torch.full(codes.shape, scale, dtype=torch.float64)
    torch.testing.assert_close(_analytic(heads, codes, sample_weights=weights),
                               _analytic(heads, codes))


@FAST
@given(batches())
def test_sum_of_the_heads_alone(batch):
    heads, codes = batch
    alone = sum(_analytic({h: s}, codes) for h, s in heads.items())
    torch.testing.assert_close(_analytic(heads, codes), alone)


# ------------------------------------------------------------------ the criterion
def _output(heads):
    return DRAOutput(torch.zeros(3), *(heads.get(h) for h in HEADS))


def test_criterion_without_reweighting_is_dra_loss_of_the_heads_present():
    codes = torch.tensor([0.0, 1.0, 2.0])  # the dataset's float targets
    heads = {"seen": torch.tensor([1.0, 2.0, 3.0]), "residual": torch.tensor([0.5, 6.0, 1.0])}
    criterion = DRALoss(generator=torch.Generator().manual_seed(0))
    expected = dra_loss(heads, codes, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(criterion(_output(heads), codes), expected)
    assert criterion.sample_weights(heads, codes) is None


@pytest.mark.parametrize("divergence", ["alpha", "kl", "reverse_kl"])
def test_reweighting_gives_high_loss_unlabelled_images_less_weight(divergence):
    codes = torch.tensor([0, 0, 0, 0, 1, 2])
    heads = {"seen": torch.tensor([0.1, 0.2, 0.1, 4.0, 6.0, 0.0]),  # row 3: a contaminant
             "normality": torch.tensor([6.0, 5.5, 6.0, 0.5, 0.0, 0.0])}
    weights = DRALoss(divergence=divergence).sample_weights(heads, codes)
    assert weights[3] < weights[[0, 1, 2]].min()
    assert weights[:4].mean().item() == pytest.approx(1.0)
    assert torch.equal(weights[4:], torch.ones(2))
    def loss(**kw):
        return DRALoss(generator=torch.Generator().manual_seed(0), **kw)(_output(heads), codes)

    assert torch.isfinite(loss(divergence=divergence)) and loss(divergence=divergence) < loss()


def test_docstring_example_of_dra_loss_runs():
    import doctest

    import skad.losses

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    (test,) = finder.find(skad.losses.dra_loss, "skad.losses.dra_loss")
    result = runner.run(test, out=lambda _: None)
    assert result.failed == 0 and result.attempted == 5
