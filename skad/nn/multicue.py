"""Multi-Cue's scoring in pure torch: raw cues, squashing, fusion and soft BCE targets.

The equations follow the authors' code as reconstructed in skad's
``ALGORITHMS.md`` section 3; :class:`skad.detectors.MultiCueDetector` turns
their outputs into numpy. Cue order everywhere: deviation, uncertainty,
segmentation (:data:`CUES`).
"""

import math

import torch
from torch import Tensor

from .heads import topk_mean

__all__ = [
    "CUES",
    "binary_entropy",
    "fuse_cues",
    "raw_cues",
    "soft_anomaly_labels",
    "squash",
    "squashed_cues",
]

#: Names of the cues, in the order of the columns of :func:`raw_cues`.
CUES = ("deviation", "uncertainty", "segmentation")

SEG_TOP_K = 0.1  # segmentation cue: mean of the top 10% pixels of the anomaly map
_PROB_EPS = 1e-6  # p is clamped to [eps, 1 - eps] in the entropy
_FUSE_EPS = 1e-6  # added to each squashed cue before its logarithm
_E_MAX = math.log1p(math.log(2.0))  # ln(1 + H_max), H_max = ln 2 nats
#: (c, D) of the squash phi(x; c, D) per cue; the cue values fed to it are
#: s, ln(1 + H(p)) and sqrt(g).
SQUASH = ((0.05, 1.0), (_E_MAX / 10.0, _E_MAX), (0.05, 1.0))


def soft_anomaly_labels(deviation: Tensor) -> Tensor:
    """Multi-Cue's soft BCE targets ``u = 0.95 * sigmoid(5 * (minmax(s) - 0.5))`` of a batch.

    ``minmax`` rescales the batch's (detached) deviation scores to [0, 1]; a
    constant batch maps to 0. Replaces ADL's 2-means labels: the BCE target
    is then ``max(y, u) = min(1, y + u)`` for hard labels ``y``.

    Parameters
    ----------
    deviation : Tensor of shape (B,)

    Returns
    -------
    Tensor of shape (B,)
    """
    s = deviation.detach().reshape(-1)
    lo, hi = s.min(), s.max()
    scaled = (s - lo) / (hi - lo).clamp_min(1e-12)
    return 0.95 * torch.sigmoid(5.0 * (scaled - 0.5))


def binary_entropy(prob: Tensor) -> Tensor:
    """Binary entropy in nats, ``p`` clamped to ``[1e-6, 1 - 1e-6]``."""
    p = prob.clamp(_PROB_EPS, 1.0 - _PROB_EPS)
    return -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p))


def raw_cues(outputs) -> Tensor:
    """``(B, 3)`` raw cues of ADL's outputs: deviation s, entropy H(p), segmentation g.

    ``g`` is the mean of the top 10% pixels of the anomaly probability map
    ``sigmoid(seg_logit)``. Differentiable (the localisation's cues).

    Parameters
    ----------
    outputs : skad.nn.outputs.ADLOutput
        ``(score, class_logit, seg_logit)``.

    Returns
    -------
    Tensor of shape (B, 3)
    """
    deviation, class_logit, seg_logit = outputs
    entropy = binary_entropy(torch.sigmoid(class_logit))
    seg = topk_mean(torch.sigmoid(seg_logit), SEG_TOP_K)
    return torch.stack([deviation, entropy, seg], dim=1)


def squash(x: Tensor, c: float, d: float) -> Tensor:
    """``phi(x; c, D) = ln(1 + min(max(x, 0), D) / c) / ln(1 + D / c)``: R -> [0, 1], monotone."""
    return torch.log1p(x.clamp(0.0, d) / c) / math.log1p(d / c)


def squashed_cues(raw: Tensor, deviation_reference=(0.0, 1.0)) -> Tensor:
    """``(B, 3)`` squashed cues from raw ``(s, H, g)``: phi(s'), phi(ln(1 + H)), phi(sqrt(g)).

    Parameters
    ----------
    raw : Tensor of shape (B, 3)
        :func:`raw_cues`.
    deviation_reference : pair of float, default=(0.0, 1.0)
        ``(m, r)``: the deviation cue squashes ``s' = (s - m) / r``; ``(0, 1)``
        is the paper's cue.

    Returns
    -------
    Tensor of shape (B, 3)
    """
    s, h, g = raw.unbind(dim=1)
    location, scale = deviation_reference
    s = (s - location) / scale
    values = (s, torch.log1p(h), g.clamp_min(0.0).sqrt())
    return torch.stack([squash(v, c, d) for v, (c, d) in zip(values, SQUASH)], dim=1)


def fuse_cues(squashed: Tensor, weights) -> Tensor:
    """Weighted geometric mean ``exp(sum_k w_k ln(S_k + 1e-6) / sum_k w_k)`` per row.

    Parameters
    ----------
    squashed : Tensor of shape (B, K)
    weights : array-like of shape (K,)
        Non-negative, positive sum.

    Returns
    -------
    Tensor of shape (B,)
    """
    w = torch.as_tensor(weights, dtype=squashed.dtype, device=squashed.device)
    return torch.exp((torch.log(squashed + _FUSE_EPS) * w).sum(dim=1) / w.sum())
