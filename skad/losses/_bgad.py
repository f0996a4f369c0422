"""BGAD's boundary-guided semi-push-pull loss and its criterion."""

import math
from numbers import Real

import torch
from torch import nn

from .._checks import check_float_tensor
from ..reweighting import instance_weights
from ._common import check_reduction, reduce


def bgspp_loss(normal, anomalous, *, boundary, margin=0.1, reduction="mean"):
    """BGAD's boundary-guided semi-push-pull loss (Eq. 8) on normalised log-likelihoods.

    ``sum_i |min(s_i - b_n, 0)| + sum_j |max(s_j - b_n + tau, 0)|``: normal
    vectors below the normal boundary ``b_n`` are pulled up to it (semi-pull),
    anomalous vectors above the abnormal boundary ``b_a = b_n - tau`` are
    pushed down below it (semi-push); vectors already on their side cost
    nothing. Log-likelihoods below -1 (after normalisation) are left out, as
    the paper says: they are anomalous beyond doubt, and under contamination
    the normal ones among them are likely contaminants.

    Parameters
    ----------
    normal, anomalous : Tensor of shape (N,) and (M,)
        Normalised log-likelihoods ``s = log p / alpha_n`` of normal and
        anomalous feature vectors; either may be empty.
    boundary : float or Tensor
        The normal boundary ``b_n``.
    margin : float, default=0.1
        ``tau``.
    reduction : {"mean", "sum", "none"}, default="mean"
        ``"mean"`` divides the sum by ``N + M`` (0 for no vectors); ``"none"``
        returns the per-vector terms, normal first.

    Returns
    -------
    Tensor
        Scalar, or shape (N + M,) with ``reduction="none"``.

    References
    ----------
    .. [1] X. Yao et al., "Explicit Boundary Guided Semi-Push-Pull Contrastive
       Learning for Supervised Anomaly Detection", CVPR 2023, Eq. 8.
    """
    check_float_tensor(normal, "normal", "bgspp_loss")
    check_float_tensor(anomalous, "anomalous", "bgspp_loss")
    check_reduction(reduction, "bgspp_loss")
    if not isinstance(margin, Real) or margin < 0:
        raise ValueError(f"The 'margin' parameter of bgspp_loss must be a real >= 0. Got "
                         f"{margin!r} instead.")
    pull = torch.relu(boundary - normal) * (normal >= -1.0)
    push = torch.relu(anomalous - boundary + margin) * (anomalous >= -1.0)
    return reduce(torch.cat([pull, push]), reduction)


def _lowest_share(values, rows, share):
    """Mask of the ``ceil(share * count)`` lowest ``values`` of each row id (multiple instance)."""
    picked = torch.zeros_like(values, dtype=torch.bool)
    for row in torch.unique(rows):
        where = torch.nonzero(rows == row).squeeze(1)
        k = max(1, math.ceil(share * len(where)))
        lowest = torch.topk(values[where], min(k, len(where)), largest=False).indices
        picked[where[lowest]] = True
    return picked


class BGADLoss(nn.Module):
    """BGAD's objective over the feature levels: maximum likelihood, then + BG-SPP.

    Per level, on normalised log-likelihoods ``s = l / alpha_n`` of a batch's
    vectors (``l`` the per-dimension log-likelihood): the maximum-likelihood
    term ``-mean(l)`` over normal vectors (averaged per image, with optional
    instance weights of the images), and after ``boundary_start`` of training
    ``lam * bgspp_loss`` with the normal boundary ``b_n`` the ``beta``-quantile
    of the batch's normal ``s``. Anomalous vectors are those labelled so (masks,
    pseudo-anomalies) plus, for each image labelled anomalous without a mask,
    its ``anomaly_top_k`` share of lowest-likelihood candidate vectors
    (multiple-instance learning, skad's extension for image-level labels).
    Levels are summed.

    Parameters
    ----------
    alpha_n : float, default=10.0
        Normaliser of the log-likelihoods.
    beta : float, default=0.05
        Quantile of the normal boundary (the paper's 1%; its code's default 5%).
    margin : float, default=0.1
        ``tau``: the abnormal boundary is ``b_n - tau``.
    lam : float, default=1.0
        Weight of the BG-SPP term.
    boundary_start : float in [0, 1), default=0.2
        Share of training with the maximum-likelihood term only (phase 1).
    anomaly_top_k : float in (0, 1], default=0.1
        Share of a mask-less labelled anomaly's vectors taken as anomalous.
    divergence : {"alpha", "kl", "reverse_kl"} or None, default=None
        Instance reweighting of the images' maximum-likelihood terms
        (:func:`skad.reweighting.instance_weights` on each image's mean
        negative log-likelihood, shifted to start at 0); None keeps uniform
        weights.
    reweight_lam, reweight_alpha : float, default=0.1
        Of the reweighting.

    Attributes
    ----------
    progress : float
        Fraction of training done (set by :class:`skad._net.TrainingProgress`).

    Notes
    -----
    ``forward(outputs, y_true)``: ``outputs`` the per-level log-likelihoods
    ``(B, P_l)`` of ``P_l`` vectors of each of ``B`` images; ``y_true`` one
    ``codes`` tensor ``(B, P_l)`` per level: 0 normal, 1 anomalous, 2
    candidate of a mask-less labelled anomaly, -1 ignored.
    """

    def __init__(self, *, alpha_n=10.0, beta=0.05, margin=0.1, lam=1.0, boundary_start=0.2,
                 anomaly_top_k=0.1, divergence=None, reweight_lam=0.1, reweight_alpha=0.1):
        super().__init__()
        self.alpha_n = alpha_n
        self.beta = beta
        self.margin = margin
        self.lam = lam
        self.boundary_start = boundary_start
        self.anomaly_top_k = anomaly_top_k
        self.divergence = divergence
        self.reweight_lam = reweight_lam
        self.reweight_alpha = reweight_alpha
        self.progress = 0.0

    def _maximum_likelihood(self, ll, rows):
        """Mean over images of each image's mean negative log-likelihood, optionally weighted."""
        ids, inverse = torch.unique(rows, return_inverse=True)
        counts = torch.zeros(len(ids), device=ll.device, dtype=ll.dtype).index_add_(
            0, inverse, torch.ones_like(ll))
        per_image = torch.zeros(len(ids), device=ll.device, dtype=ll.dtype).index_add_(
            0, inverse, -ll) / counts
        if self.divergence is None or self.progress < self.boundary_start:
            return per_image.mean()
        shifted = (per_image - per_image.min()).detach()
        weights = instance_weights(shifted, divergence=self.divergence, lam=self.reweight_lam,
                                   alpha=self.reweight_alpha).to(ll.dtype)
        return (weights * per_image).sum()

    def forward(self, outputs, y_true):
        total = 0.0
        phase_two = self.progress >= self.boundary_start
        for ll, codes in zip(outputs, y_true):
            rows = torch.arange(ll.shape[0], device=ll.device)[:, None].expand_as(ll).reshape(-1)
            ll, codes = ll.reshape(-1), codes.reshape(-1)
            normal = codes == 0
            anomalous = codes == 1
            candidates = codes == 2
            if bool(candidates.any()):
                picked = torch.zeros_like(anomalous)
                picked[candidates] = _lowest_share(ll[candidates].detach(), rows[candidates],
                                                   self.anomaly_top_k)
                anomalous = anomalous | picked
            loss = self._maximum_likelihood(ll[normal], rows[normal]) if bool(normal.any()) \
                else ll.sum() * 0.0
            if phase_two and bool(normal.any()):
                s = ll / self.alpha_n
                boundary = torch.quantile(s[normal].detach().float(), self.beta).to(s.dtype)
                loss = loss + self.lam * bgspp_loss(s[normal], s[anomalous], boundary=boundary,
                                                    margin=self.margin)
            total = total + loss
        return total
