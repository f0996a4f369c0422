"""DRA's routed multi-head deviation loss and its criterion."""

import torch
from torch import Tensor, nn

from .._checks import check_float_tensor
from ..reweighting import instance_weights
from ._deviation import deviation_loss

#: DRA's routing: ``head -> (codes it trains on, codes it treats as anomalous)``, with the
#: internal codes 0 unlabelled (assumed normal), 1 labelled (seen) anomaly, 2 pseudo-anomaly.
#: The normality head is trained the other way round: normal images are pushed above the
#: margin, seen and pseudo-anomalies down to the reference mean.
DRA_ROUTES = {
    "seen": ((0, 1), (1,)),
    "pseudo": ((0, 2), (2,)),
    "residual": ((0, 1, 2), (1, 2)),
    "normality": ((0, 1, 2), (0,)),
}


def _check_dra_codes(codes, func_name):
    if not isinstance(codes, Tensor) or codes.ndim != 1:
        raise TypeError(
            f"The 'codes' parameter of {func_name} must be a 1-D torch.Tensor of internal "
            f"codes (0 unlabelled, 1 labelled anomaly, 2 pseudo-anomaly). Got "
            f"{type(codes).__name__} of shape {tuple(getattr(codes, 'shape', ()))} instead."
        )
    if codes.numel() and not bool(((codes == 0) | (codes == 1) | (codes == 2)).all()):
        raise ValueError(
            f"The 'codes' parameter of {func_name} must hold only 0 (unlabelled), 1 (labelled "
            "anomaly) and 2 (pseudo-anomaly). Got other values; translate public labels "
            "(-1 anomaly, +1 unlabelled) with (1 - y) // 2 first."
        )


def dra_loss(heads, codes, *, margin=5.0, n_reference=5000, generator=None,
             analytic_reference=False, sample_weights=None):
    r"""DRA's objective: the deviation loss of each head on the samples routed to it, summed.

    Each head :math:`h` of DRA [1]_ sees only part of the batch
    (:data:`DRA_ROUTES`): the seen head the unlabelled images and the labelled
    anomalies, the pseudo head the unlabelled images and the pseudo-anomalies,
    the residual and normality heads every sample. On its rows :math:`R_h`
    the head's :func:`deviation_loss` :math:`\ell_{h,i}` with target
    :math:`q_{h,i}` (1 for the codes the head treats as anomalous) is
    averaged with sample weights :math:`w_i` (1 by default), and the heads
    are summed:

    .. math::

        L = \sum_h \frac{\sum_{i \in R_h} w_i\, \ell_{h,i}}{\sum_{i \in R_h} w_i}.

    The normality head's target is reversed: normal images are pushed at
    least ``margin`` above the reference mean, anomalies pulled to it (its
    score enters DRA's anomaly score with a minus sign).

    Parameters
    ----------
    heads : mapping of str to torch.Tensor of shape (n_samples,)
        Scores of some of the heads ``"seen"``, ``"pseudo"``, ``"residual"``
        and ``"normality"`` (a head left out is off); floating point.
    codes : torch.Tensor of shape (n_samples,)
        Internal codes: 0 unlabelled, 1 labelled anomaly, 2 pseudo-anomaly
        (any numeric dtype).
    margin : float, default=5.0
        Deviation-loss margin ``a`` of every head.
    n_reference : int, default=5000
        Reference draws per head (see :func:`deviation_loss`).
    generator : torch.Generator, default=None
        Source of the reference draws.
    analytic_reference : bool, default=False
        Use :math:`\mu_R = 0, \sigma_R = 1` instead of draws.
    sample_weights : torch.Tensor of shape (n_samples,), default=None
        Non-negative weights :math:`w_i` (instance reweighting of the
        unlabelled images); None weights every sample by 1.

    Returns
    -------
    loss : torch.Tensor
        A scalar. A head with no routed row (a batch without seen anomalies
        for the seen head) contributes a graph-connected 0.

    See Also
    --------
    deviation_loss : The per-head loss.
    DRALoss : The criterion module, with optional instance reweighting.

    References
    ----------
    .. [1] C. Ding, G. Pang and C. Shen, "Catching both gray and black swans:
       open-set supervised anomaly detection", CVPR 2022.
       :doi:`10.1109/CVPR52688.2022.00719`

    Examples
    --------
    >>> import torch
    >>> from skad.losses import dra_loss
    >>> codes = torch.tensor([0, 1, 2])
    >>> heads = {"seen": torch.tensor([1.0, 2.0, 9.0]), "normality": torch.tensor([5.0, 0.0, 1.0])}
    >>> # seen: rows 0, 1 -> (|1| + (5 - 2)) / 2 = 2; normality: (0 + 0 + 1) / 3
    >>> round(dra_loss(heads, codes, analytic_reference=True).item(), 4)
    2.3333
    """
    func_name = "dra_loss"
    if not isinstance(heads, dict) or not heads or not set(heads) <= set(DRA_ROUTES):
        raise ValueError(
            f"The 'heads' parameter of {func_name} must be a non-empty dict whose keys are "
            f"among {tuple(DRA_ROUTES)}. Got {heads!r} instead."
        )
    _check_dra_codes(codes, func_name)
    for name, scores in heads.items():
        check_float_tensor(scores, f"heads[{name!r}]", func_name)
        if scores.shape != codes.shape:
            raise ValueError(
                f"The 'heads' parameter of {func_name} must hold scores shaped like 'codes' "
                f"{tuple(codes.shape)}. Got shape {tuple(scores.shape)} for {name!r} instead."
            )
    if sample_weights is not None:
        check_float_tensor(sample_weights, "sample_weights", func_name)
        if sample_weights.shape != codes.shape or not bool(
                (torch.isfinite(sample_weights) & (sample_weights >= 0)).all()):
            raise ValueError(
                f"The 'sample_weights' parameter of {func_name} must be finite, non-negative "
                f"and shaped like 'codes' {tuple(codes.shape)}. Got shape "
                f"{tuple(sample_weights.shape)} or negative, infinite or NaN values instead."
            )
    total = 0.0
    for name in DRA_ROUTES:
        if name not in heads:
            continue
        scores = heads[name]
        trained_on, anomalous = DRA_ROUTES[name]
        device_codes = codes.to(scores.device)
        rows = sum(device_codes == c for c in trained_on).bool()
        target = sum(device_codes[rows] == c for c in anomalous).to(scores.dtype)
        losses = deviation_loss(scores[rows], target, margin=margin, n_reference=n_reference,
                                generator=generator, analytic_reference=analytic_reference,
                                reduction="none")
        weights = (torch.ones_like(losses) if sample_weights is None
                   else sample_weights.to(device=scores.device, dtype=scores.dtype)[rows])
        weighted, mass = (weights * losses).sum(), weights.sum()
        total = total + (weighted / mass if bool(mass > 0) else weighted)
    return total


class DRALoss(nn.Module):
    """DRA's criterion: :func:`dra_loss` of a module's heads, optionally reweighted.

    With ``divergence`` set, the unlabelled images' weights come from
    :func:`skad.reweighting.instance_weights` on each one's summed per-head
    losses (detached, analytic reference), scaled to a mean of 1 over the
    unlabelled images of the batch: likely contaminants (unlabelled anomalies,
    with high losses) count less. Labelled and pseudo-anomalies keep weight 1.

    Parameters
    ----------
    margin : float, default=5.0
        Deviation margin of every head.
    n_reference : int, default=5000
        Reference draws per head and call.
    generator : torch.Generator or None, default=None
        Source of the reference draws (the estimator's).
    divergence : {"alpha", "kl", "reverse_kl"} or None, default=None
        Instance reweighting of the unlabelled images; None keeps weight 1.
    lam, alpha : float, default=0.1
        Of the instance reweighting.

    Notes
    -----
    ``forward(outputs, target)`` takes an output with the fields ``seen``,
    ``pseudo``, ``residual`` and ``normality`` (``None`` for a head that is
    off; :class:`skad.nn.outputs.DRAOutput`) and the internal codes.
    """

    def __init__(self, *, margin=5.0, n_reference=5000, generator=None, divergence=None,
                 lam=0.1, alpha=0.1):
        super().__init__()
        self.margin = margin
        self.n_reference = n_reference
        self.generator = generator
        self.divergence = divergence
        self.lam = lam
        self.alpha = alpha

    def sample_weights(self, heads, codes):
        """Weights ``(B,)`` of :func:`dra_loss`, or None without reweighting."""
        normal = codes == 0
        if self.divergence is None or not bool(normal.any()):
            return None
        per_sample = 0.0
        for name, scores in heads.items():
            anomalous = DRA_ROUTES[name][1]
            target = sum(codes == c for c in anomalous).to(scores.dtype)
            per_sample = per_sample + deviation_loss(
                scores.detach(), target, margin=self.margin, analytic_reference=True,
                reduction="none")
        losses = per_sample[normal]
        weights = torch.ones_like(per_sample)
        weights[normal] = instance_weights(losses, divergence=self.divergence, lam=self.lam,
                                           alpha=self.alpha).to(weights.dtype) * len(losses)
        return weights

    def forward(self, outputs, target):
        heads = {name: getattr(outputs, name) for name in DRA_ROUTES
                 if getattr(outputs, name, None) is not None}
        codes = target.to(next(iter(heads.values())).device)
        return dra_loss(heads, codes, margin=self.margin, n_reference=self.n_reference,
                        generator=self.generator, sample_weights=self.sample_weights(heads, codes))
