"""The deviation loss family: DevNet's deviation and focal losses, ADL's objective."""

from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from ..reweighting import instance_weights
from ._common import check_pair, check_reduction, reduce


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
    target = check_pair(scores, target, "scores", func_name)
    if not isinstance(margin, Real) or isinstance(margin, bool) or not margin > 0:
        raise ValueError(
            f"The 'margin' parameter of {func_name} must be a float > 0. Got {margin!r} instead."
        )
    check_reduction(reduction, func_name)

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
    return reduce(loss, reduction)


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
    target = check_pair(logits, target, "logits", func_name)
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
    check_reduction(reduction, func_name)

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
    return reduce(loss, reduction)


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
