"""Conditional normalizing flows in pure torch: BGAD's density model of frozen features.

BGAD (Yao et al., CVPR 2023; ``ALGORITHMS.md`` §4) fits one conditional
normalizing flow per feature level to the feature vectors of a frozen CNN,
conditioned on a 2-D positional encoding of each vector's position
(:func:`positional_encoding`, after CFLOW-AD), and scores a position by its
log-likelihood. Its flows are FrEIA's ``AllInOneBlock`` stacked in a
``SequenceINN``. :class:`AffineCouplingBlock` performs the same arithmetic, so
that a flow trained here behaves like the authors', but it draws its random
rotation and initial weights from an explicit ``torch.Generator`` (FrEIA draws
them from numpy's and torch's global random states) and adds no dependency.
"""

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["AffineCouplingBlock", "ConditionalFlow", "FlowOutput", "positional_encoding"]

_LOG_2PI = math.log(2.0 * math.pi)



class FlowOutput(NamedTuple):
    """What a flow or a block returns: the output and the log-determinant.

    A plain tuple (FrEIA's ``(output, log_jac_det)`` contract), with names.

    Parameters
    ----------
    z : Tensor of shape (N, D)
        The transformed rows (the latent codes in the forward direction).
    log_jac_det : Tensor of shape (N,) or None
        ``log |det dz/dx|`` of each row; ``None`` when called with ``jac=False``.
    """

    z: torch.Tensor
    log_jac_det: torch.Tensor | None


def positional_encoding(height, width, dim=128):
    """2-D sine/cosine positional encoding of a ``height x width`` grid.

    The first ``dim / 2`` channels encode the column, the other half the row,
    each as interleaved ``sin(p * w_k), cos(p * w_k)`` pairs at the integer
    position ``p`` with frequencies ``w_k = exp(-k ln(10^4) / (dim / 2))``,
    ``k = 0, 2, 4, ..., dim / 2 - 2``: the transformer encoding applied to each
    axis, the condition of CFLOW-AD's and BGAD's flows [1]_ [2]_.

    Parameters
    ----------
    height, width : int
        Size of the feature map.
    dim : int, default=128
        Channels, a multiple of 4 (a sine and a cosine per frequency and axis).

    Returns
    -------
    encoding : Tensor of shape (dim, height, width), dtype float32
        ``encoding[2j, r, c] = sin(c * w_2j)``, ``encoding[2j + 1, r, c] = cos(c * w_2j)``
        and the same with the row ``r`` in channels ``dim / 2`` onwards.

    References
    ----------
    .. [1] D. Gudovskiy, S. Ishizaka and K. Kozuka, "CFLOW-AD: Real-time
       unsupervised anomaly detection with localization via conditional
       normalizing flows", WACV 2022, Sec. 4.
    .. [2] X. Yao, R. Li, J. Zhang, J. Sun and C. Zhang, "Explicit Boundary
       Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly
       Detection", CVPR 2023, Sec. 3.1.

    Examples
    --------
    >>> from skad.nn.flows import positional_encoding
    >>> positional_encoding(4, 6, dim=8).shape
    torch.Size([8, 4, 6])
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 4:
        raise ValueError(f"dim={dim!r} must be a positive multiple of 4: a sine and a cosine "
                         "per frequency for each of the two axes.")
    half = dim // 2
    # float64 so that the encoding of large positions is exact to float32 rounding
    freqs = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(1e4) / half))
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freqs  # (W, dim/4)
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freqs  # (H, dim/4)
    enc = torch.empty(dim, height, width, dtype=torch.float64)
    enc[0:half:2] = cols.sin().T[:, None, :]
    enc[1:half:2] = cols.cos().T[:, None, :]
    enc[half::2] = rows.sin().T[:, :, None]
    enc[half + 1::2] = rows.cos().T[:, :, None]
    return enc.float()


def _random_rotation(n, generator=None):
    """A Haar-random rotation in SO(n), float32, drawn on the CPU from ``generator``.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (without
    them Q is not uniformly distributed; Mezzadri 2007), then one column negated
    where needed so that ``det = +1``, as scipy's ``special_ortho_group`` (which
    FrEIA calls with numpy's global random state).
    """
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def _linear(n_in, n_out, generator):
    """``nn.Linear`` with torch's default initialisation drawn from ``generator``.

    torch's default is ``U(-1/sqrt(n_in), 1/sqrt(n_in))`` for the weight and the
    bias (kaiming-uniform with ``a = sqrt(5)``); ``skip_init`` leaves the global
    random state alone.
    """
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _check_inputs(x, c, n_features, cond_dim):
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor of shape (N, {n_features}); got {shape}.")
    if x.shape[1] != n_features:
        raise ValueError(f"x has {x.shape[1]} features per row; the flow was built for "
                         f"n_features={n_features}.")
    if cond_dim == 0:
        if c is not None:
            raise ValueError("c must be None: the flow was built without a condition (cond_dim=0).")
        return
    if c is None:
        raise ValueError(f"c is required: the flow was built for a condition of width "
                         f"cond_dim={cond_dim}.")
    if not isinstance(c, torch.Tensor) or c.ndim != 2 or c.shape[1] != cond_dim:
        shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
        raise ValueError(f"c must be a 2-D tensor of shape (N, cond_dim={cond_dim}); got {shape}.")
    if len(c) != len(x):
        raise ValueError(f"c has {len(c)} rows and x has {len(x)}: one condition per row of x.")


def _check_sizes(n_features, cond_dim, clamp):
    if n_features < 2:
        raise ValueError(f"n_features={n_features} must be at least 2: a coupling splits the "
                         "features into two non-empty halves.")
    if cond_dim < 0:
        raise ValueError(f"cond_dim={cond_dim} must be non-negative (0: no condition).")
    if not clamp > 0:
        raise ValueError(f"clamp={clamp} must be positive.")


class AffineCouplingBlock(nn.Module):
    """Conditional affine coupling, global affine scaling and a fixed rotation.

    FrEIA's ``AllInOneBlock`` [3]_ with BGAD's settings [1]_ (a conditional
    fully connected subnet, ``affine_clamping=clamp``, ``global_affine_type=
    'SOFTPLUS'``, ``permute_soft=True``), on rows ``x`` of shape ``(N, D)``:

    1. Split ``x`` into ``x1`` (the first ``ceil(D / 2)`` features) and ``x2``.
    2. Real NVP's affine coupling [2]_: ``(s, t) = 0.1 * subnet([x1, c])``,
       ``x2 <- x2 * exp(clamp * tanh(s)) + t``. The subnet is
       ``Linear(k -> 2k) - ReLU - Linear(2k -> 2 * floor(D / 2))`` with
       ``k = ceil(D / 2) + cond_dim``. The soft clamp keeps every log-scale in
       ``(-clamp, clamp)``; the factor 0.1 (FrEIA's) makes the block start close
       to the identity and learn slowly.
    3. Global affine ("ActNorm"): ``u <- u * a + b`` with a learned offset ``b``
       and scale ``a = 0.1 * softplus(g; beta=0.5) > 0``, initialised to 1
       (FrEIA's soft-plus parametrisation, which damps the scale's updates).
    4. A fixed rotation: ``z = u @ R.T`` with ``R`` a random matrix of SO(D),
       drawn once from ``generator`` and kept as a buffer, which mixes the
       halves between blocks at no cost to the log-determinant.

    The log-determinant is ``sum(clamp * tanh(s)) + sum(log a)``. FrEIA's
    plain coupling blocks clamp with ``clamp * 0.636 * atan(s)`` instead;
    ``AllInOneBlock``, and so BGAD, use ``tanh`` as here.

    Parameters
    ----------
    n_features : int
        Width ``D`` of the rows, at least 2.
    cond_dim : int, default=0
        Width ``C`` of the condition; 0 for none.
    clamp : float, default=1.9
        Bound on each coupling log-scale (BGAD's ``clamp_alpha``).
    generator : torch.Generator, default=None
        Draws the rotation and the subnet's initial weights (on the CPU); the
        global random state when None.

    Attributes
    ----------
    rotation : Tensor of shape (D, D)
        The fixed rotation ``R`` (a buffer).

    References
    ----------
    .. [1] X. Yao, R. Li, J. Zhang, J. Sun and C. Zhang, "Explicit Boundary
       Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly
       Detection", CVPR 2023, Sec. 3.1.
    .. [2] L. Dinh, J. Sohl-Dickstein and S. Bengio, "Density estimation using
       Real NVP", ICLR 2017.
    .. [3] Visual Learning Lab Heidelberg, "FrEIA: Framework for Easily
       Invertible Architectures", version 0.2 (2022), ``AllInOneBlock``, MIT
       licence. https://github.com/vislearn/FrEIA

    Examples
    --------
    >>> import torch
    >>> from skad.nn.flows import AffineCouplingBlock
    >>> block = AffineCouplingBlock(5, cond_dim=3, generator=torch.Generator().manual_seed(0))
    >>> x, c = torch.randn(4, 5), torch.randn(4, 3)
    >>> z, log_jac_det = block(x, c)
    >>> torch.allclose(block(z, c, rev=True).z, x, atol=1e-5)
    True
    """

    def __init__(self, n_features, *, cond_dim=0, clamp=1.9, generator=None):
        super().__init__()
        _check_sizes(n_features, cond_dim, clamp)
        self.n_features, self.cond_dim, self.clamp = n_features, cond_dim, float(clamp)
        self.split = n_features - n_features // 2  # x1 is the larger half for odd D, as in FrEIA
        width = self.split + cond_dim
        self.subnet = nn.Sequential(_linear(width, 2 * width, generator), nn.ReLU(),
                                    _linear(2 * width, 2 * (n_features // 2), generator))
        # softplus(g; beta=0.5) = 2 log(1 + exp(g / 2)), so 0.1 * that is 1 at g = 2 log(e^5 - 1)
        self.global_scale_raw = nn.Parameter(
            torch.full((n_features,), 2.0 * math.log(math.expm1(5.0))))
        self.global_offset = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("rotation", _random_rotation(n_features, generator))

    @property
    def global_scale(self):
        """The global affine scale ``a`` (Tensor of shape (D,), positive)."""
        return 0.1 * nn.functional.softplus(self.global_scale_raw, beta=0.5)

    def _transform(self, x, c, rev, jac):
        x1, x2 = x[:, :self.split], x[:, self.split:]
        scale = self.global_scale
        if rev:
            # undo the rotation (R orthogonal: R^-1 = R.T) and the global affine first
            u = (x @ self.rotation - self.global_offset) / scale
            x1, x2 = u[:, :self.split], u[:, self.split:]
        h = self.subnet(x1 if c is None else torch.cat([x1, c], dim=1))
        log_s = self.clamp * torch.tanh(0.1 * h[:, :x2.shape[1]])
        t = 0.1 * h[:, x2.shape[1]:]
        x2 = (x2 - t) * torch.exp(-log_s) if rev else x2 * torch.exp(log_s) + t
        out = torch.cat([x1, x2], dim=1)
        if not rev:
            out = (out * scale + self.global_offset) @ self.rotation.T
        if not jac:
            return FlowOutput(out, None)
        log_jac_det = log_s.sum(dim=1) + torch.log(scale).sum()
        return FlowOutput(out, -log_jac_det if rev else log_jac_det)

    def forward(self, x, c=None, rev=False, jac=True):
        """Apply the block, or its inverse with ``rev=True``.

        Parameters
        ----------
        x : Tensor of shape (N, n_features)
            Rows to transform (latent codes when ``rev=True``).
        c : Tensor of shape (N, cond_dim) or None, default=None
            One condition per row; None when ``cond_dim=0``.
        rev : bool, default=False
            Apply the inverse transformation.
        jac : bool, default=True
            Compute the log-determinant; ``False`` returns None in its place.

        Returns
        -------
        output : FlowOutput
            ``(z, log_jac_det)``: the transformed rows, shape (N, n_features),
            and ``log |det J|`` of the transformation applied (shape (N,)),
            the negative of the forward one when ``rev=True``.
        """
        _check_inputs(x, c, self.n_features, self.cond_dim)
        return self._transform(x, c, rev, jac)


class ConditionalFlow(nn.Module):
    """Conditional normalizing flow of ``n_blocks`` affine coupling blocks.

    BGAD's density model of the frozen feature vectors of one level [1]_: a
    stack of :class:`AffineCouplingBlock` mapping a feature vector ``x``,
    conditioned on ``c`` (a positional encoding), to a latent code ``z``
    modelled as standard normal, so that by the change of variables

    ``log p(x | c) = -||z||^2 / 2 - D ln(2 pi) / 2 + log |det dz/dx|``.

    Parameters
    ----------
    n_features : int
        Width ``D`` of the feature vectors, at least 2.
    cond_dim : int, default=128
        Width of the condition (BGAD's ``pos_embed_dim``); 0 for none.
    n_blocks : int, default=8
        Coupling blocks (BGAD's ``coupling_layers``).
    clamp : float, default=1.9
        Bound on each coupling log-scale (BGAD's ``clamp_alpha``).
    generator : torch.Generator, default=None
        Draws every block's rotation and initial weights (on the CPU): the same
        generator state gives the same flow. The global random state when None.

    Attributes
    ----------
    blocks : nn.ModuleList of AffineCouplingBlock
        The blocks, in the forward order.

    References
    ----------
    .. [1] X. Yao, R. Li, J. Zhang, J. Sun and C. Zhang, "Explicit Boundary
       Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly
       Detection", CVPR 2023, Sec. 3.1.
    .. [2] L. Dinh, J. Sohl-Dickstein and S. Bengio, "Density estimation using
       Real NVP", ICLR 2017.
    .. [3] Visual Learning Lab Heidelberg, "FrEIA: Framework for Easily
       Invertible Architectures", version 0.2 (2022), ``AllInOneBlock``, MIT
       licence. https://github.com/vislearn/FrEIA

    Examples
    --------
    >>> import torch
    >>> from skad.nn.flows import ConditionalFlow, positional_encoding
    >>> flow = ConditionalFlow(6, cond_dim=8, n_blocks=2,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> c = positional_encoding(3, 4, dim=8).flatten(1).T  # one condition per position
    >>> x = torch.randn(12, 6)
    >>> flow.log_likelihood(x, c).shape
    torch.Size([12])
    >>> torch.allclose(flow.inverse(flow(x, c).z, c), x, atol=1e-5)
    True
    """

    def __init__(self, n_features, *, cond_dim=128, n_blocks=8, clamp=1.9, generator=None):
        super().__init__()
        _check_sizes(n_features, cond_dim, clamp)
        if n_blocks < 1:
            raise ValueError(f"n_blocks={n_blocks} must be at least 1.")
        self.n_features, self.cond_dim = n_features, cond_dim
        self.blocks = nn.ModuleList(
            AffineCouplingBlock(n_features, cond_dim=cond_dim, clamp=clamp, generator=generator)
            for _ in range(n_blocks))

    def forward(self, x, c=None, rev=False, jac=True):
        """Map feature vectors to latent codes, or back with ``rev=True``.

        Parameters
        ----------
        x : Tensor of shape (N, n_features)
            Feature vectors (latent codes when ``rev=True``).
        c : Tensor of shape (N, cond_dim) or None, default=None
            One condition per row; None when ``cond_dim=0``.
        rev : bool, default=False
            Apply the inverse flow, the blocks in reverse order.
        jac : bool, default=True
            Compute the log-determinant; ``False`` returns None in its place.

        Returns
        -------
        output : FlowOutput
            ``(z, log_jac_det)``: the transformed rows, shape (N, n_features),
            and the summed ``log |det J|`` of the blocks, shape (N,).
        """
        _check_inputs(x, c, self.n_features, self.cond_dim)
        log_jac_det = torch.zeros(len(x), dtype=x.dtype, device=x.device) if jac else None
        for block in (reversed(self.blocks) if rev else self.blocks):
            x, block_log_jac_det = block._transform(x, c, rev, jac)
            if jac:
                log_jac_det = log_jac_det + block_log_jac_det
        return FlowOutput(x, log_jac_det)

    def inverse(self, z, c=None):
        """Map latent codes back to feature vectors.

        Parameters
        ----------
        z : Tensor of shape (N, n_features)
            Latent codes.
        c : Tensor of shape (N, cond_dim) or None, default=None
            The conditions they were computed with.

        Returns
        -------
        x : Tensor of shape (N, n_features)
            The feature vectors, ``x`` such that ``forward(x, c).z == z``.
        """
        return self(z, c, rev=True, jac=False).z

    def log_likelihood(self, x, c=None):
        """Log-likelihood per dimension of each row, BGAD's ``log p(x | c) / D``.

        ``-||z||^2 / (2 D) - ln(2 pi) / 2 + log |det dz/dx| / D`` with
        ``z = forward(x, c).z``, standard normal latents and ``D = n_features``.
        Dividing by ``D`` puts the levels of a feature pyramid, whose widths
        differ, on one scale.

        Parameters
        ----------
        x : Tensor of shape (N, n_features)
            Feature vectors.
        c : Tensor of shape (N, cond_dim) or None, default=None
            One condition per row; None when ``cond_dim=0``.

        Returns
        -------
        log_likelihood : Tensor of shape (N,)
            Differentiable, so that its negative mean is the maximum-likelihood
            loss.
        """
        z, log_jac_det = self(x, c)
        d = self.n_features
        return -0.5 * z.pow(2).sum(dim=1) / d - 0.5 * _LOG_2PI + log_jac_det / d
