"""Instance reweighting for training on contaminated data.

ADL (``ALGORITHMS.md`` section 2) trains on an unlabelled pool that hides some
anomalies labelled as normal. Such contaminants tend to have larger losses than
clean samples, so each minibatch's per-sample losses are reweighted with
importance weights that stay close to uniform but move mass away from the
high-loss samples. This module is pure torch: it never touches scikit-learn or
skorch, so a detector's training step can call it directly.
"""

from numbers import Real

import torch

from ._checks import check_float_tensor

__all__ = ["instance_weights"]

_DIVERGENCES = ("kl", "reverse_kl", "alpha", None)


def _is_real(value):
    return isinstance(value, Real) and not isinstance(value, bool)


def _work_dtype(device):
    # Weights are computed in float64 whatever the input dtype: tiny ``lam`` or
    # huge losses then neither overflow nor underflow to NaN, and alpha close to
    # 1 keeps its precision. MPS has no float64; fall back to float32 there.
    return torch.float32 if device.type == "mps" else torch.float64


def _check_losses(losses, func_name):
    check_float_tensor(losses, "losses", func_name)
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(
            f"The 'losses' parameter of {func_name} must be a non-empty 1-D tensor of "
            f"per-sample losses (use reduction='none'). Got shape {tuple(losses.shape)} instead."
        )
    # One device sync per call; cheap next to the training step it serves.
    if not bool((torch.isfinite(losses) & (losses >= 0)).all()):
        raise ValueError(
            f"The 'losses' parameter of {func_name} must contain finite, non-negative "
            "values. Got negative, infinite or NaN losses."
        )


def _alpha_log_weights(d, loss_min, alpha, lam):
    r"""Unnormalised log-weights of the alpha family, shifted so the minimum is 0.

    With :math:`c = (1 - \alpha)\ell_{\min} + \lambda` and
    :math:`d_i = \ell_i - \ell_{\min}`,
    :math:`\log w_i = -\log(1 + (1 - \alpha) d_i / c) / (1 - \alpha)` up to a
    constant: the sample of smallest loss has log-weight exactly 0, so the
    softmax never sees only ``-inf`` entries, and the ``log1p`` form stays
    accurate as alpha approaches 1 (where it tends to :math:`-d_i/\lambda`).
    """
    one_minus_alpha = 1.0 - alpha
    base_min = one_minus_alpha * loss_min + lam  # >= lam > 0
    # Multiply before dividing: a reciprocal of a tiny ``lam`` could be inf and
    # give inf * 0 = NaN on the sample of smallest loss.
    ratio = (one_minus_alpha * d) / base_min
    return -torch.log1p(ratio) / one_minus_alpha


def instance_weights(losses, *, divergence="alpha", lam=0.1, alpha=0.1):
    r"""Importance weights of a minibatch from its per-sample losses.

    The weights solve, over the probability simplex, a trade-off between the
    weighted loss and a divergence from the uniform distribution
    :math:`u_i = 1/B` [1]_, [2]_:

    .. math::

        \min_{w \ge 0,\ \sum_i w_i = 1}\ \sum_i w_i \ell_i + \lambda\, D(w \,\|\, u),

    where ``lam`` is the Lagrange multiplier :math:`\lambda` of the divergence
    constraint. Closed forms, normalised to sum to 1:

    - ``"kl"``, :math:`D = \sum_i w_i \log(w_i / u_i)`:
      :math:`w_i \propto \exp(-\ell_i / \lambda)`;
    - ``"reverse_kl"``, :math:`D = \sum_i u_i \log(u_i / w_i)`:
      :math:`w_i \propto 1 / (\ell_i + \lambda)`;
    - ``"alpha"``, Amari's :math:`\alpha`-divergence:
      :math:`w_i \propto [(1 - \alpha)\ell_i + \lambda]_+^{1/(\alpha - 1)}`,
      which tends to the KL form as :math:`\alpha \to 1` and equals the
      reverse-KL form at :math:`\alpha = 0`;
    - ``None``: uniform weights :math:`1/B` (ADL's burn-in).

    High-loss samples, likely contaminants among the unlabelled data, are
    down-weighted. :math:`\lambda \to \infty` gives uniform weights;
    :math:`\lambda \to 0` concentrates the mass on the smallest losses (for KL
    on the smallest loss alone; for the alpha family
    :math:`w_i \propto \ell_i^{-1/(1-\alpha)}`, i.e. all the mass on zero
    losses if there are any).

    Parameters
    ----------
    losses : torch.Tensor of shape (n_samples,)
        Per-sample losses, finite and non-negative, floating point (e.g. a loss
        with ``reduction="none"``). Detached: no gradient flows into the
        weights.
    divergence : {"alpha", "kl", "reverse_kl"} or None, default="alpha"
        Divergence :math:`D` to the uniform distribution. None returns uniform
        weights (the losses are still validated).
    lam : float, default=0.1
        Lagrange multiplier :math:`\lambda > 0`: larger values keep the weights
        closer to uniform. Ignored when ``divergence=None``.
    alpha : float, default=0.1
        Order :math:`\alpha \in [0, 1)` of the alpha-divergence. Only used when
        ``divergence="alpha"``; use ``divergence="kl"`` for the limit
        :math:`\alpha = 1`.

    Returns
    -------
    weights : torch.Tensor of shape (n_samples,)
        Non-negative weights summing to 1, non-increasing in the loss, with the
        dtype and device of ``losses`` and ``requires_grad=False``.

    Raises
    ------
    TypeError
        If ``losses`` is not a floating-point tensor.
    ValueError
        If ``losses`` is not a non-empty 1-D tensor of finite non-negative
        values, or ``divergence``, ``lam`` or ``alpha`` is invalid.

    See Also
    --------
    skad.losses.deviation_loss : Per-sample deviation losses to reweight.

    Notes
    -----
    Derivation. For KL the stationarity condition of the Lagrangian gives
    :math:`w_i = u_i \exp(-(\ell_i + \mu)/\lambda)`, with :math:`\mu` the
    multiplier of :math:`\sum_i w_i = 1`; :math:`\mu` only rescales, so the
    normalised form is the exact minimiser. For the alpha family the condition
    reads :math:`w_i \propto [(1 - \alpha)(\ell_i + \mu) + \lambda]^{1/(\alpha-1)}`;
    following ADL's Eq. (9)-(10) and [2]_, the weights use :math:`\mu = 0` and
    are normalised afterwards (the exact minimiser corresponds to the effective
    multiplier :math:`\lambda + (1 - \alpha)\mu`). With non-negative losses,
    :math:`\lambda > 0` and :math:`\alpha < 1` the base
    :math:`(1 - \alpha)\ell_i + \lambda` is positive, so the positive part
    :math:`[\cdot]_+` never clips.

    Numerics. The weights are computed in float64 (float32 on MPS) as
    log-weights shifted so that the smallest loss has log-weight 0, then
    normalised by a softmax (log-sum-exp): huge or tiny losses and tiny
    ``lam`` give finite weights summing to 1, with weights that underflow
    becoming exactly 0. The result is cast back to the dtype of ``losses``.

    References
    ----------
    .. [1] Adaptive deviation learning for visual anomaly detection with data
       contamination (ADL), Eq. (7)-(10); see ``ALGORITHMS.md`` section 2.
    .. [2] A. Kumar and E. Amid, "Constrained instance and class reweighting
       for robust learning under label noise", arXiv:2111.05428, 2021.

    Examples
    --------
    >>> import torch
    >>> from skad.reweighting import instance_weights
    >>> losses = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    >>> instance_weights(losses, divergence="reverse_kl", lam=1.0)
    tensor([0.5714, 0.2857, 0.1429], dtype=torch.float64)
    >>> instance_weights(losses, divergence=None)
    tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64)
    """
    func_name = "instance_weights"
    if not (divergence is None or (isinstance(divergence, str) and divergence in _DIVERGENCES)):
        raise ValueError(
            f"The 'divergence' parameter of {func_name} must be one of "
            f"{_DIVERGENCES}. Got {divergence!r} instead."
        )
    if not _is_real(lam) or not lam > 0:
        raise ValueError(
            f"The 'lam' parameter of {func_name} must be a float > 0. Got {lam!r} instead."
        )
    if divergence == "alpha" and (not _is_real(alpha) or not 0 <= alpha < 1):
        raise ValueError(
            f"The 'alpha' parameter of {func_name} must be a float in [0, 1). "
            f"Got {alpha!r} instead. For alpha = 1 (the KL limit) use divergence='kl'."
        )
    _check_losses(losses, func_name)

    losses = losses.detach()
    n_samples = losses.shape[0]
    if divergence is None:
        return torch.full_like(losses, 1.0 / n_samples)

    work = losses.to(_work_dtype(losses.device))
    loss_min = work.min()
    d = work - loss_min  # >= 0, exactly 0 on the smallest loss
    lam = float(lam)
    if divergence == "kl":
        log_w = -d / lam
    else:
        # Reverse-KL is the alpha family at alpha = 0: share the code path so
        # that both agree exactly.
        a = 0.0 if divergence == "reverse_kl" else float(alpha)
        log_w = _alpha_log_weights(d, loss_min, a, lam)
    return torch.softmax(log_w, dim=0).to(losses.dtype)
