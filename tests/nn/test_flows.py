"""BGAD's conditional normalizing flows: positional encoding, coupling block, flow."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

from skad.nn.flows import (
    AffineCouplingBlock,
    ConditionalFlow,
    FlowOutput,
    _random_rotation,
    positional_encoding,
)


@pytest.fixture(autouse=True)
def one_thread():
    # the tensors here are tiny: a second thread brings nothing, and where the cores are shared
    # its spin-waits make the training test 2-10x slower
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def inputs(n, n_features, cond_dim, seed=0, scale=1.0, dtype=torch.float32):
    g = gen(seed)
    x = scale * torch.randn(n, n_features, generator=g, dtype=dtype)
    c = torch.randn(n, cond_dim, generator=g, dtype=dtype) if cond_dim else None
    return x, c


def perturb(module, seed, spread=1.0, shift=0.0):
    """Move the global affines away from their initial (1, 0), so that they count."""
    g = gen(seed)
    with torch.no_grad():
        for block in module.modules():
            if isinstance(block, AffineCouplingBlock):
                raw = block.global_scale_raw
                raw.add_(shift + spread * torch.randn(raw.shape, generator=g, dtype=raw.dtype))
                block.global_offset.copy_(torch.randn(raw.shape, generator=g, dtype=raw.dtype))
    return module


def make_affine(module):
    """Zero the last subnet layers: every coupling is the identity, each block affine."""
    with torch.no_grad():
        for block in module.modules():
            if isinstance(block, AffineCouplingBlock):
                block.subnet[-1].weight.zero_()
                block.subnet[-1].bias.zero_()
    return module


# --- positional encoding -------------------------------------------------------------------


def test_positional_encoding_values():
    dim, height, width = 16, 5, 7
    enc = positional_encoding(height, width, dim=dim)
    assert enc.shape == (dim, height, width) and enc.dtype == torch.float32
    half = dim // 2
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                torch.arange(width, dtype=torch.float32), indexing="ij")
    for j, k in enumerate(range(0, half, 2)):
        freq = math.exp(-k * math.log(1e4) / half)
        torch.testing.assert_close(enc[2 * j], torch.sin(cols * freq))
        torch.testing.assert_close(enc[2 * j + 1], torch.cos(cols * freq))
        torch.testing.assert_close(enc[half + 2 * j], torch.sin(rows * freq))
        torch.testing.assert_close(enc[half + 2 * j + 1], torch.cos(rows * freq))
    # the first frequency is 1 (channel 0 at column 3 is sin 3) and position 0 is (0, 1, 0, 1, ...)
    assert enc[0, 2, 3] == pytest.approx(math.sin(3.0))
    assert enc[half, 4, 0] == pytest.approx(math.sin(4.0))
    assert torch.equal(enc[:, 0, 0], torch.tensor([0.0, 1.0] * (dim // 2)))
    # the column half does not depend on the row, nor the row half on the column
    assert torch.equal(enc[:half], enc[:half, :1].expand(-1, height, -1))
    assert torch.equal(enc[half:], enc[half:, :, :1].expand(-1, -1, width))


def test_positional_encoding_is_bgads_default_and_unit_per_pair():
    enc = positional_encoding(24, 40)  # dim=128: 64 channels per axis, 32 frequencies
    assert enc.shape == (128, 24, 40)
    squares = enc.pow(2)
    torch.testing.assert_close(squares[0::2] + squares[1::2], torch.ones(64, 24, 40))
    # the lowest frequency of the column half is exp(-62 ln(1e4) / 64)
    freq = math.exp(-62 * math.log(1e4) / 64)
    assert enc[62, 0, 39] == pytest.approx(math.sin(39 * freq), abs=1e-6)
    assert enc[127, 23, 0] == pytest.approx(math.cos(23 * freq), abs=1e-6)


@pytest.mark.parametrize("dim", [0, 2, 6, 130, -4, 8.0])
def test_positional_encoding_rejects_a_dim_that_is_not_a_multiple_of_four(dim):
    with pytest.raises(ValueError, match=r"dim=.* multiple of 4"):
        positional_encoding(3, 3, dim=dim)


# --- invertibility and log-determinants ----------------------------------------------------


@pytest.mark.parametrize("n_features", [2, 3, 5, 16, 33])
@pytest.mark.parametrize("cond_dim", [0, 7])
def test_block_inverts(n_features, cond_dim):
    block = perturb(AffineCouplingBlock(n_features, cond_dim=cond_dim, generator=gen(0)), 1)
    x, c = inputs(64, n_features, cond_dim, scale=3.0)
    z, log_jac_det = block(x, c)
    assert z.shape == x.shape and log_jac_det.shape == (64,)
    assert not torch.allclose(z, x, atol=0.1)  # not the identity
    torch.testing.assert_close(block(z, c, rev=True).z, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_features", [2, 3, 17, 64])
def test_flow_inverts(n_features, global_random_seed):
    flow = ConditionalFlow(n_features, cond_dim=16, generator=gen(global_random_seed))
    perturb(flow, global_random_seed)
    x, c = inputs(128, n_features, 16, seed=global_random_seed, scale=2.0)
    z, log_jac_det = flow(x, c)
    assert z.shape == x.shape and log_jac_det.shape == (128,)
    torch.testing.assert_close(flow.inverse(z, c), x, atol=1e-4, rtol=0)


def test_log_jac_det_equals_autograds_for_a_block_and_the_flow(global_random_seed):
    n_features, cond_dim, seed = 5, 3, global_random_seed
    block = AffineCouplingBlock(n_features, cond_dim=cond_dim, generator=gen(seed))
    flow = ConditionalFlow(n_features, cond_dim=cond_dim, n_blocks=4, generator=gen(seed))
    # global scales of 1.2 +- 0.15 per dimension and block, so that the log-determinant is
    # far from 0 (0.9 for a block on average)
    block = perturb(block, seed, spread=1.5, shift=2.0)
    flow = perturb(flow, seed, spread=1.5, shift=2.0)
    # float64, so that the comparison is not drowned in rounding; the rotations are stored in
    # float32, orthogonal only to ~1e-7, hence the tolerance
    block, flow = block.double(), flow.double()
    x, c = inputs(1, n_features, cond_dim, seed=seed, scale=2.0, dtype=torch.float64)
    for module in (block, flow):
        for rev in (False, True):
            jac = jacobian(lambda v, m=module, r=rev: m(v[None], c, rev=r).z[0], x[0])
            sign, logabsdet = torch.linalg.slogdet(jac)
            assert sign != 0
            log_jac_det = module(x, c, rev=rev).log_jac_det.detach()
            assert float(log_jac_det) == pytest.approx(float(logabsdet), abs=1e-5)
            assert abs(float(log_jac_det)) > 0.1


def test_forward_and_reverse_log_jac_dets_cancel(global_random_seed):
    seed = global_random_seed
    x, c = inputs(32, 9, 4, seed=seed, scale=2.0)
    for module in (AffineCouplingBlock(9, cond_dim=4, generator=gen(seed)),
                   ConditionalFlow(9, cond_dim=4, generator=gen(seed))):
        perturb(module, seed)
        z, forward = module(x, c)
        x_back, reverse = module(z, c, rev=True)
        torch.testing.assert_close(reverse, -forward, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)


def test_outputs_are_plain_tuples_and_jac_false_skips_the_log_det():
    flow = ConditionalFlow(4, cond_dim=2, n_blocks=2, generator=gen(0))
    x, c = inputs(3, 4, 2)
    out = flow(x, c)
    assert isinstance(out, FlowOutput) and isinstance(out, tuple) and len(out) == 2
    z, log_jac_det = out
    assert torch.equal(z, out.z) and torch.equal(log_jac_det, out.log_jac_det)
    without = flow(x, c, jac=False)
    assert without.log_jac_det is None and torch.equal(without.z, z)
    assert flow.blocks[0](x, c, jac=False).log_jac_det is None


@settings(max_examples=25, deadline=None)
@given(n_features=st.integers(2, 12), cond_dim=st.integers(0, 6), n_blocks=st.integers(1, 4),
       n=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 4.0))
def test_flow_inverts_whatever_the_shape_and_seed(n_features, cond_dim, n_blocks, n, seed, scale):
    flow = ConditionalFlow(n_features, cond_dim=cond_dim, n_blocks=n_blocks, generator=gen(seed))
    perturb(flow, seed)
    x, c = inputs(n, n_features, cond_dim, seed=seed, scale=scale)
    z, forward = flow(x, c)
    assert torch.isfinite(z).all() and torch.isfinite(forward).all()
    x_back, reverse = flow(z, c, rev=True)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reverse, -forward, atol=1e-4, rtol=1e-5)


# --- rotation and reproducibility ----------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_rotation_is_a_rotation(n, global_random_seed):
    r = _random_rotation(n, gen(global_random_seed))
    assert r.shape == (n, n) and r.dtype == torch.float32
    torch.testing.assert_close(r @ r.T, torch.eye(n), atol=1e-5, rtol=0)
    assert float(torch.linalg.det(r.double())) == pytest.approx(1.0, abs=1e-5)


def test_rotation_is_uniformly_distributed():
    # a Haar rotation of SO(3) has mean 0 entrywise (each entry has variance 1/3, so the mean of
    # 500 has a standard error of 0.026); a plain QR, without the sign fix, gives diagonal
    # means near -0.48 or 0.48
    rotations = torch.stack([_random_rotation(3, gen(s)) for s in range(500)])
    assert float(rotations.mean(dim=0).abs().max()) < 0.15


def test_the_generator_decides_the_flow():
    x, c = inputs(16, 6, 4)
    a = ConditionalFlow(6, cond_dim=4, n_blocks=3, generator=gen(7))
    b = ConditionalFlow(6, cond_dim=4, n_blocks=3, generator=gen(7))
    other = ConditionalFlow(6, cond_dim=4, n_blocks=3, generator=gen(8))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.equal(a(x, c).z, b(x, c).z)
    assert not torch.allclose(a(x, c).z, other(x, c).z)
    assert not torch.allclose(a.blocks[0].rotation, other.blocks[0].rotation)
    # the blocks of one flow get different rotations from the one generator
    assert not torch.allclose(a.blocks[0].rotation, a.blocks[1].rotation)
    # the rotation is a buffer: saved and moved with the flow, never trained
    assert "blocks.0.rotation" in dict(a.named_buffers())
    assert all("rotation" not in name for name, _ in a.named_parameters())


def test_a_generator_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    ConditionalFlow(10, cond_dim=8, generator=gen(0))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_flows_without_a_generator_follow_the_global_seed():
    x, c = inputs(8, 5, 3)
    torch.manual_seed(3)
    a = ConditionalFlow(5, cond_dim=3, n_blocks=2)
    torch.manual_seed(3)
    b = ConditionalFlow(5, cond_dim=3, n_blocks=2)
    assert torch.equal(a(x, c).z, b(x, c).z)


# --- log-likelihood ------------------------------------------------------------------------


def test_log_likelihood_of_an_identity_coupled_flow_is_the_standard_normals():
    # with identity couplings and the initial global affines (scale 1, offset 0) the flow is
    # a product of rotations, so ||z|| = ||x||, log |det J| = 0 and log p(x) is the standard
    # normal density
    flow = make_affine(ConditionalFlow(8, cond_dim=4, n_blocks=3, generator=gen(0)))
    x, c = inputs(20000, 8, 4, seed=1)
    z, log_jac_det = flow(x, c)
    torch.testing.assert_close(z.norm(dim=1), x.norm(dim=1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(log_jac_det, torch.zeros(20000), atol=1e-5, rtol=0)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).mean(dim=1)
    torch.testing.assert_close(flow.log_likelihood(x, c), expected, atol=1e-5, rtol=1e-5)
    # and its mean is the entropy of N(0, 1), negated
    assert float(flow.log_likelihood(x, c).detach().mean()) == pytest.approx(
        -0.5 - 0.5 * math.log(2 * math.pi), abs=0.01)


def test_log_likelihood_of_an_affine_flow_is_a_gaussian_density():
    # identity couplings and random global affines: z = M x + m, so x ~ N(-M^-1 m, (M.T M)^-1),
    # whose density torch.distributions computes independently of the flow
    n_features = 6
    flow = perturb(make_affine(ConditionalFlow(n_features, cond_dim=2, n_blocks=3,
                                               generator=gen(0))), 1).double()
    zero = torch.zeros(1, n_features, dtype=torch.float64)
    c = torch.zeros(1, 2, dtype=torch.float64)
    m = flow(zero, c).z[0]
    matrix = (flow(torch.eye(n_features, dtype=torch.float64), c.expand(n_features, 2)).z - m).T
    precision = matrix.T @ matrix
    gaussian = torch.distributions.MultivariateNormal(
        -torch.linalg.solve(matrix, m), precision_matrix=precision)
    x, c = inputs(50, n_features, 2, seed=2, scale=2.0, dtype=torch.float64)
    torch.testing.assert_close(flow.log_likelihood(x, c), gaussian.log_prob(x) / n_features)


def test_log_likelihood_is_the_per_dimension_formula():
    flow = perturb(ConditionalFlow(7, cond_dim=3, n_blocks=2, generator=gen(0)), 0)
    x, c = inputs(10, 7, 3)
    z, log_jac_det = flow(x, c)
    expected = (-0.5 * (z**2).sum(1) - 3.5 * math.log(2 * math.pi) + log_jac_det) / 7
    ll = flow.log_likelihood(x, c)
    assert ll.shape == (10,)
    torch.testing.assert_close(ll, expected)


def linear_gaussian(n, generator):
    """x | c ~ N(c W + b, diag(sigma^2)) with c ~ N(0, I_2): the condition shifts the mean."""
    weight = torch.tensor([[1.0, 0.0, -0.5, 0.5], [0.0, 0.8, 0.5, 0.0]])
    sigma = torch.tensor([0.6, 1.0, 1.4, 0.5])
    c = torch.randn(n, 2, generator=generator)
    x = c @ weight + torch.tensor([0.5, -0.5, 0.3, 0.0]) + sigma * torch.randn(n, 4,
                                                                                generator=generator)
    return x, c, sigma


def test_maximum_likelihood_learns_a_conditional_gaussian(global_random_seed):
    g = gen(global_random_seed)
    x, c, sigma = linear_gaussian(1024, g)
    x_test, c_test, _ = linear_gaussian(4000, g)
    # expected log p(x | c) / D of the true model, and the best that ignores the condition
    true = -0.5 * math.log(2 * math.pi) - 0.5 - float(sigma.log().mean())
    marginal = torch.distributions.MultivariateNormal(x_test.mean(0), torch.cov(x_test.T))
    unconditional = float(marginal.log_prob(x_test).mean()) / 4
    flow = ConditionalFlow(4, cond_dim=2, n_blocks=4, generator=gen(global_random_seed))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(flow.log_likelihood(x_test, c_test).mean())
    for _ in range(200):
        optimizer.zero_grad()
        (-flow.log_likelihood(x, c).mean()).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(flow.log_likelihood(x_test, c_test).mean())
    assert after > before + 0.3
    # measured over seeds 0-29: 0.006 to 0.044 below the truth. Above it (beyond the
    # sampling error of the test mean, about 0.005) would mean a wrong log-determinant.
    assert true - 0.07 < after < true + 0.02
    assert after > unconditional + 0.2  # the flow uses the condition (here 0.27 apart)


# --- validation ----------------------------------------------------------------------------


def test_rejects_inputs_of_the_wrong_shape():
    flow = ConditionalFlow(4, cond_dim=3, n_blocks=1, generator=gen(0))
    x, c = inputs(5, 4, 3)
    with pytest.raises(ValueError, match=r"^x must be a 2-D tensor of shape \(N, 4\); got \(4,\)"):
        flow(x[0], c)
    with pytest.raises(ValueError, match=r"^x must be a 2-D"):
        flow.log_likelihood(x[None], c)
    with pytest.raises(ValueError, match=r"^x has 3 features .* n_features=4"):
        flow(x[:, :3], c)
    with pytest.raises(ValueError, match=r"^c is required: .* cond_dim=3"):
        flow(x)
    with pytest.raises(ValueError, match=r"^c must be a 2-D tensor of shape \(N, cond_dim=3\); "
                                         r"got \(5, 2\)"):
        flow(x, c[:, :2])
    with pytest.raises(ValueError, match=r"^c must be a 2-D"):
        flow.inverse(x, c[0])
    with pytest.raises(ValueError, match=r"^c has 4 rows and x has 5"):
        flow(x, c[:4])
    with pytest.raises(ValueError, match=r"^c must be None: .*cond_dim=0"):
        ConditionalFlow(4, cond_dim=0, n_blocks=1)(x, c)
    with pytest.raises(ValueError, match=r"^x has 5 features"):
        AffineCouplingBlock(4, cond_dim=3)(torch.zeros(2, 5), torch.zeros(2, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_features=1), "n_features=1 must be at least 2"),
    (dict(n_features=4, cond_dim=-1), "cond_dim=-1"),
    (dict(n_features=4, n_blocks=0), "n_blocks=0"),
    (dict(n_features=4, clamp=0.0), "clamp=0.0"),
])
def test_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConditionalFlow(**kwargs)


# --- FrEIA -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_features, cond_dim", [(5, 3), (8, 0), (33, 16)])
def test_block_computes_what_freias_all_in_one_block_computes(n_features, cond_dim):
    # BGAD's block: FrEIA's AllInOneBlock with a Linear(k, 2k)-ReLU-Linear(2k, out) subnet,
    # affine_clamping=1.9, SOFTPLUS global affine and a soft (orthogonal) permutation.
    # FrEIA is not a dependency: this runs where it happens to be installed.
    modules = pytest.importorskip("FrEIA.modules")
    ours = perturb(AffineCouplingBlock(n_features, cond_dim=cond_dim, generator=gen(0)), 0)
    theirs = modules.AllInOneBlock(
        [(n_features,)], dims_c=[(cond_dim,)] if cond_dim else [],
        subnet_constructor=lambda k, out: torch.nn.Sequential(
            torch.nn.Linear(k, 2 * k), torch.nn.ReLU(), torch.nn.Linear(2 * k, out)),
        affine_clamping=1.9, global_affine_type="SOFTPLUS", permute_soft=True)
    theirs.subnet.load_state_dict(ours.subnet.state_dict())
    with torch.no_grad():
        theirs.global_scale.copy_(ours.global_scale_raw[None])
        theirs.global_offset.copy_(ours.global_offset[None])
        theirs.w_perm.copy_(ours.rotation)
        theirs.w_perm_inv.copy_(ours.rotation.T)
    x, c = inputs(50, n_features, cond_dim, scale=3.0)
    conditions = [c] if cond_dim else []
    for rev in (False, True):
        (z_theirs,), log_jac_det_theirs = theirs((x,), c=conditions, rev=rev)
        z, log_jac_det = ours(x, c, rev=rev)
        torch.testing.assert_close(z, z_theirs)
        torch.testing.assert_close(log_jac_det, log_jac_det_theirs)
