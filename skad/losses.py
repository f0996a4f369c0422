"""Every method's objective: loss functions and the criterion modules built on them.

Pure functions of tensors with keyword-only hyperparameters, and thin
:class:`torch.nn.Module` criteria (``(outputs, target) -> loss``) that a
detector hands to its skorch net. Nothing here touches scikit-learn or skorch.

Internally a target of 1 means *anomaly* and 0 means *normal* (the papers'
convention); the public estimator API uses -1 for anomalies and translates at
its boundary.
"""

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_float_tensor
from .reweighting import instance_weights

__all__ = [
    "ADLLoss",
    "BGADLoss",
    "DRALoss",
    "DRA_ROUTES",
    "DeviationLoss",
    "bgspp_loss",
    "deviation_loss",
    "dra_loss",
    "focal_loss",
    "two_means_labels",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction, func_name):
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"The 'reduction' parameter of {func_name} must be one of {_REDUCTIONS}. "
            f"Got {reduction!r} instead."
        )


def _check_pair(input, target, input_name, func_name):
    """Validate an (input, target) pair and return the target as input's dtype."""
    check_float_tensor(input, input_name, func_name)
    if not isinstance(target, Tensor):
        raise TypeError(
            f"The 'target' parameter of {func_name} must be a torch.Tensor. "
            f"Got {type(target).__name__} instead."
        )
    if target.shape != input.shape:
        raise ValueError(
            f"The 'target' parameter of {func_name} must have the same shape as "
            f"'{input_name}' {tuple(input.shape)}. Got shape {tuple(target.shape)} instead."
        )
    target = target.to(device=input.device, dtype=input.dtype)
    # NaN fails both comparisons, so test it explicitly: a NaN label would
    # silently poison the whole batch's loss.
    if target.numel() and bool(((target < 0) | (target > 1) | torch.isnan(target)).any()):
        raise ValueError(
            f"The 'target' parameter of {func_name} must contain values in [0, 1] "
            "(1 = anomaly, 0 = normal; soft labels allowed). Translate public labels "
            "(-1 anomaly, +1 normal) with (1 - y) / 2 first."
        )
    return target


def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # An empty batch has no mean; returning a graph-connected zero keeps a
    # training step that happens to draw no sample of some kind well defined.
    if loss.numel() == 0:
        return loss.sum()
    return loss.mean()


def deviation_loss(
    scores,
    target,
    *,
    margin=5.0,
    n_reference=5000,
    generator=None,
    analytic_reference=False,
    reduction="mean",
):
    r"""Deviation loss of DevNet, with ADL's soft labels.

    Scores are standardised against a Gaussian prior of normal scores,
    :math:`z_i = (s_i - \mu_R) / \sigma_R`, where :math:`\mu_R` and
    :math:`\sigma_R` are the mean and standard deviation of ``n_reference``
    draws :math:`r_k \sim \mathcal{N}(0, 1)`. Normal samples are pulled to the
    reference mean and anomalies pushed at least ``margin`` standard deviations
    above it:

    .. math::

        \ell_i = (1 - q_i)\,|z_i| + q_i \max(0, a - z_i),

    with :math:`a` the margin and :math:`q_i \in [0, 1]` the target. A hard
    target (0 or 1) gives DevNet's loss [1]_; a soft target gives ADL's soft
    deviation loss [2]_, which interpolates both cases linearly.

    Parameters
    ----------
    scores : torch.Tensor of shape (n_samples,)
        Anomaly scores, higher = more anomalous. Floating point.
    target : torch.Tensor of shape (n_samples,)
        Labels in [0, 1]: 1 = anomaly, 0 = normal, values in between are soft
        labels (anomaly probabilities). Cast to the dtype of ``scores``.
    margin : float, default=5.0
        Margin :math:`a > 0`, in reference standard deviations, by which
        anomalies must exceed the reference mean to cost nothing.
    n_reference : int, default=5000
        Number of reference scores drawn from N(0, 1) at each call. Ignored
        when ``analytic_reference=True``.
    generator : torch.Generator, default=None
        Generator for the reference draw, so that training is reproducible.
        The draw happens on the generator's device and is moved to the device
        of ``scores``. None uses torch's global generator on the device of
        ``scores``.
    analytic_reference : bool, default=False
        If True, use the large-sample limit :math:`\mu_R = 0`,
        :math:`\sigma_R = 1` instead of a random draw; the loss is then a
        deterministic function of its inputs.
    reduction : {"mean", "sum", "none"}, default="mean"
        "none" returns the per-sample losses (needed by instance reweighting);
        "mean" of an empty batch is 0.

    Returns
    -------
    loss : torch.Tensor
        A scalar, or a tensor of shape (n_samples,) when ``reduction="none"``,
        with the dtype of ``scores``.

    See Also
    --------
    focal_loss : Binary focal loss, used for segmentation heads.

    Notes
    -----
    The reference standard deviation uses Bessel's correction, as the PyTorch
    implementations of DRA and ADL do (``torch.std``); with 5000 draws the
    difference to the population estimate is negligible. The reference draw
    is always made in float32, so a given generator state gives the same
    reference whatever the dtype of ``scores``. No gradient flows into the
    reference.

    References
    ----------
    .. [1] G. Pang, C. Shen and A. van den Hengel, "Deep anomaly detection
       with deviation networks", KDD 2019. :doi:`10.1145/3292500.3330871`
    .. [2] Adaptive deviation learning for visual anomaly detection with data
       contamination (ADL), see ``ALGORITHMS.md`` section 2.

    Examples
    --------
    >>> import torch
    >>> from skad.losses import deviation_loss
    >>> scores = torch.tensor([0.0, 2.0, 1.0, 7.0])
    >>> target = torch.tensor([0.0, 0.0, 1.0, 1.0])
    >>> deviation_loss(scores, target, analytic_reference=True, reduction="none")
    tensor([0., 2., 4., 0.])
    """
    func_name = "deviation_loss"
    target = _check_pair(scores, target, "scores", func_name)
    if not isinstance(margin, Real) or isinstance(margin, bool) or not margin > 0:
        raise ValueError(
            f"The 'margin' parameter of {func_name} must be a float > 0. Got {margin!r} instead."
        )
    _check_reduction(reduction, func_name)

    if analytic_reference:
        z = scores
    else:
        if not isinstance(n_reference, int) or isinstance(n_reference, bool) or n_reference < 2:
            # One draw has no standard deviation to standardise by.
            raise ValueError(
                f"The 'n_reference' parameter of {func_name} must be an int >= 2. "
                f"Got {n_reference!r} instead."
            )
        draw_device = scores.device if generator is None else generator.device
        reference = torch.randn(
            n_reference, generator=generator, device=draw_device, dtype=torch.float32
        )
        mu = reference.mean().to(device=scores.device, dtype=scores.dtype)
        sigma = reference.std().to(device=scores.device, dtype=scores.dtype)
        z = (scores - mu) / sigma

    loss = (1 - target) * z.abs() + target * F.relu(margin - z)
    return _reduce(loss, reduction)


def focal_loss(logits, target, *, gamma=2.0, alpha=None, reduction="mean"):
    r"""Binary focal loss on logits.

    .. math::

        \mathrm{FL} = -\alpha_t (1 - p_t)^\gamma \log p_t,

    with :math:`p = \sigma(x)`, :math:`p_t = p\,t + (1 - p)(1 - t)` and
    :math:`\alpha_t = \alpha t + (1 - \alpha)(1 - t)` [1]_. For soft targets
    :math:`-\log p_t` is replaced by the binary cross-entropy, as in
    ``torchvision.ops.sigmoid_focal_loss``. ``gamma=0`` and ``alpha=None``
    give the binary cross-entropy with logits.

    Parameters
    ----------
    logits : torch.Tensor of any shape
        Raw scores, e.g. (n_samples, 1, H, W) segmentation logits or
        (n_samples,) classification logits. Floating point.
    target : torch.Tensor of the same shape as ``logits``
        Targets in [0, 1]: 1 = anomaly (positive class). Cast to the dtype of
        ``logits``.
    gamma : float, default=2.0
        Focusing parameter :math:`\gamma \ge 0`; larger values down-weight
        well-classified elements more.
    alpha : float, default=None
        Weight in [0, 1] of the positive class (and ``1 - alpha`` of the
        negative class). None weights both classes by 1.
    reduction : {"mean", "sum", "none"}, default="mean"
        Reduction over all elements; "none" keeps the shape of ``logits``.

    Returns
    -------
    loss : torch.Tensor
        A scalar, or a tensor shaped like ``logits`` when ``reduction="none"``.

    See Also
    --------
    deviation_loss : Deviation loss on anomaly scores.

    Notes
    -----
    The modulating factor is computed in log space,
    :math:`\log(1 - p_t) = \operatorname{logaddexp}(\log t + \log\sigma(-x),
    \log(1 - t) + \log\sigma(x))`, so it neither cancels catastrophically
    nor produces NaN gradients for saturated logits.

    References
    ----------
    .. [1] T.-Y. Lin, P. Goyal, R. Girshick, K. He and P. Dollár, "Focal loss
       for dense object detection", ICCV 2017. :doi:`10.1109/ICCV.2017.324`

    Examples
    --------
    >>> import torch
    >>> from skad.losses import focal_loss
    >>> logits = torch.tensor([0.0, 0.0])
    >>> target = torch.tensor([1.0, 0.0])
    >>> round(focal_loss(logits, target, gamma=0.0).item(), 4)  # = log 2
    0.6931
    >>> round(focal_loss(logits, target, gamma=2.0).item(), 4)  # = log 2 / 4
    0.1733
    """
    func_name = "focal_loss"
    target = _check_pair(logits, target, "logits", func_name)
    if not isinstance(gamma, Real) or isinstance(gamma, bool) or not gamma >= 0:
        raise ValueError(
            f"The 'gamma' parameter of {func_name} must be a float >= 0. Got {gamma!r} instead."
        )
    if alpha is not None and (
        not isinstance(alpha, Real) or isinstance(alpha, bool) or not 0 <= alpha <= 1
    ):
        raise ValueError(
            f"The 'alpha' parameter of {func_name} must be None or a float in [0, 1]. "
            f"Got {alpha!r} instead."
        )
    _check_reduction(reduction, func_name)

    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma != 0:
        # 1 - p_t = t*sigmoid(-x) + (1-t)*sigmoid(x); log(0) = -inf for hard
        # targets is harmless inside logaddexp (its weight is exp(-inf) = 0).
        log_one_minus_pt = torch.logaddexp(
            torch.log(target) + F.logsigmoid(-logits),
            torch.log1p(-target) + F.logsigmoid(logits),
        )
        loss = loss * torch.exp(gamma * log_one_minus_pt)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return _reduce(loss, reduction)


def two_means_labels(scores):
    """Exact 1-D 2-means clustering of scores: 1 for the high cluster, 0 for the low one.

    ADL's classification head is trained, after burn-in, against these labels
    of the batch's deviation scores in alternation with the given labels. In
    one dimension the optimal 2-means split is a threshold between two sorted
    neighbours, found from prefix sums in ``O(B log B)``.

    Parameters
    ----------
    scores : Tensor of shape (B,)
        Scores of one batch.

    Returns
    -------
    labels : Tensor of shape (B,)
        Float 0/1 labels on the scores' device; all zeros when the scores are
        constant (one cluster).

    Examples
    --------
    >>> import torch
    >>> from skad.losses import two_means_labels
    >>> two_means_labels(torch.tensor([0.1, 5.0, 0.2, 4.0, 0.0]))
    tensor([0., 1., 0., 1., 0.])
    """
    scores = scores.detach().reshape(-1)
    n = scores.numel()
    if n < 2 or bool(scores.max() == scores.min()):
        return torch.zeros_like(scores)
    values, order = scores.double().sort()
    csum = values.cumsum(0)
    csum2 = (values * values).cumsum(0)
    k = torch.arange(1, n, device=scores.device, dtype=torch.float64)  # size of the low cluster
    low_sse = csum2[:-1] - csum[:-1] ** 2 / k
    high_sum, high_sum2 = csum[-1] - csum[:-1], csum2[-1] - csum2[:-1]
    high_sse = high_sum2 - high_sum**2 / (n - k)
    split = int(torch.argmin(low_sse + high_sse)) + 1
    labels = torch.zeros(n, dtype=scores.dtype, device=scores.device)
    labels[order[split:]] = 1
    return labels


# --------------------------------------------------------------------------- criteria


class DeviationLoss(nn.Module):
    """DevNet's criterion: :func:`deviation_loss` of a module's image scores.

    Parameters
    ----------
    margin : float, default=5.0
        Deviation margin ``a``.
    n_reference : int, default=5000
        Reference draws per call.
    generator : torch.Generator or None, default=None
        Source of the reference draws (the estimator's, so that fits are
        reproducible).

    Notes
    -----
    ``forward(outputs, target)`` takes a module output with a ``score`` field
    (:class:`skad.nn.outputs.ScoreOutput`) and internal targets (1 = anomaly).
    """

    def __init__(self, *, margin=5.0, n_reference=5000, generator=None):
        super().__init__()
        self.margin = margin
        self.n_reference = n_reference
        self.generator = generator

    def forward(self, outputs, target):
        scores = outputs.score
        return deviation_loss(
            scores, target.to(scores.dtype), margin=self.margin,
            n_reference=self.n_reference, generator=self.generator,
        )


class ADLLoss(nn.Module):
    """ADL's objective (Eqn. 11 of the paper) on one batch.

    ``sum_i w1_i l_soft,i + sum_i w2_i l_bce,i + l_seg`` where the weights come
    from :func:`skad.reweighting.instance_weights` on the detached losses after
    burn-in and are uniform before. ``progress`` (the fraction of training
    done) is set by the training loop (:class:`skad._net.TrainingProgress`).

    Parameters
    ----------
    gamma : float, default=5.0
        Deviation margin.
    n_reference : int, default=5000
    divergence : {"alpha", "kl", "reverse_kl"} or None, default="alpha"
        Instance reweighting; None keeps uniform weights.
    lam, alpha : float, default=0.1
        Of the instance reweighting.
    burn_in : float, default=0.06
        Share of training with uniform weights and hard labels.
    soft_labels : bool, default=True
        Soft deviation targets from the classification head after burn-in.
    classification_loss, segmentation_loss : bool, default=True
        Include the BCE and the focal segmentation term.
    kmeans_prob : float, default=0.6
        Probability per batch, after burn-in, of the BCE target
        ``max(y, pseudo_labels(deviation))``.
    generator : torch.Generator or None, default=None
        On the training device.

    Attributes
    ----------
    pseudo_labels : callable
        Deviation scores ``(B,)`` -> BCE targets in [0, 1]: :func:`two_means_labels`
        (ADL); Multi-Cue swaps in :func:`skad.nn.multicue.soft_anomaly_labels`.
    progress : float
        Fraction of training done.

    Notes
    -----
    ``forward(outputs, y_true)`` takes an :class:`skad.nn.outputs.ADLOutput`
    and ``(target, masks, seg_valid)``: internal targets ``(B,)``, masks
    ``(B, 1, H, W)`` and which rows join the segmentation loss.
    """

    def __init__(self, *, gamma=5.0, n_reference=5000, divergence="alpha", lam=0.1, alpha=0.1,
                 burn_in=0.06, soft_labels=True, classification_loss=True,
                 segmentation_loss=True, kmeans_prob=0.6, generator=None):
        super().__init__()
        self.gamma = gamma
        self.n_reference = n_reference
        self.divergence = divergence
        self.lam = lam
        self.alpha = alpha
        self.burn_in = burn_in
        self.soft_labels = soft_labels
        self.classification_loss = classification_loss
        self.segmentation_loss = segmentation_loss
        self.kmeans_prob = kmeans_prob
        self.generator = generator
        self.pseudo_labels = two_means_labels
        self.progress = 0.0

    def _weights(self, losses, burnt_in):
        if self.divergence is None or not burnt_in:
            return torch.full_like(losses, 1.0 / len(losses))
        return instance_weights(losses.detach(), divergence=self.divergence, lam=self.lam,
                                alpha=self.alpha)

    def forward(self, outputs, y_true):
        deviation, logit, seg_logit = outputs
        target, masks, seg_valid = y_true
        burnt_in = self.progress >= self.burn_in
        prob = torch.sigmoid(logit)
        soft = target
        if self.soft_labels and burnt_in:
            # only the unlabelled images' labels are uncertain; anomalies stay anomalies
            soft = torch.where(target > 0, target, prob.detach())
        l_soft = deviation_loss(deviation, soft, margin=self.gamma,
                                n_reference=self.n_reference, generator=self.generator,
                                reduction="none")
        loss = (self._weights(l_soft, burnt_in) * l_soft).sum()
        if self.classification_loss:
            bce_target = target
            draw = torch.rand((), generator=self.generator, device=self.generator.device)
            if burnt_in and float(draw) < self.kmeans_prob:
                bce_target = torch.maximum(target, self.pseudo_labels(deviation))
            l_bce = F.binary_cross_entropy_with_logits(logit, bce_target, reduction="none")
            loss = loss + (self._weights(l_bce, burnt_in) * l_bce).sum()
        if self.segmentation_loss and bool(seg_valid.any()):
            loss = loss + focal_loss(seg_logit[seg_valid], masks[seg_valid], gamma=2.0)
        return loss


# --------------------------------------------------------------------------- BGAD


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
    _check_reduction(reduction, "bgspp_loss")
    if not isinstance(margin, Real) or margin < 0:
        raise ValueError(f"The 'margin' parameter of bgspp_loss must be a real >= 0. Got "
                         f"{margin!r} instead.")
    pull = torch.relu(boundary - normal) * (normal >= -1.0)
    push = torch.relu(anomalous - boundary + margin) * (anomalous >= -1.0)
    return _reduce(torch.cat([pull, push]), reduction)


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


# --------------------------------------------------------------------------- DRA

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
