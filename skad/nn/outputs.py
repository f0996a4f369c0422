"""What skad's modules return: named tuples whose first field is the image score.

Every module a detector scores with returns one of these, in training and
evaluation mode alike (skorch evaluates losses in evaluation mode), so that
callers read ``out.score`` instead of testing for a bare tensor or a tuple.
"""

from typing import NamedTuple

from torch import Tensor

__all__ = ["ADLOutput", "DRAOutput", "PatchScoreOutput", "ScoreOutput"]


class ScoreOutput(NamedTuple):
    """A module with one output: the image anomaly score.

    Attributes
    ----------
    score : Tensor of shape (B,)
        Higher = more anomalous.
    """

    score: Tensor


class ADLOutput(NamedTuple):
    """The three heads of :class:`skad.nn.adl.ADLModule`.

    Attributes
    ----------
    score : Tensor of shape (B,)
        Non-negative deviation scores (the anomaly score).
    class_logit : Tensor of shape (B,)
        Classification logits; ``sigmoid`` gives ``p(x)``.
    seg_logit : Tensor of shape (B, 1, H, W)
        Segmentation logits at the input resolution.
    """

    score: Tensor
    class_logit: Tensor
    seg_logit: Tensor


class PatchScoreOutput(NamedTuple):
    """Image scores and patch maps of a frozen-feature module (PatchCore, PaDiM).

    Attributes
    ----------
    score : Tensor of shape (B,)
        Image anomaly scores, higher = more anomalous.
    distances : Tensor of shape (B, h, w)
        Distance of each patch to the normal model, on the embedding's grid.
    """

    score: Tensor
    distances: Tensor


class DRAOutput(NamedTuple):
    """The composite score and the four heads of :class:`skad.nn.dra.DRAModule`.

    Every head is averaged over the input scales; a head the module does not
    have (an ablation, or the seen head of a fit without labelled anomalies)
    is ``None``.

    Attributes
    ----------
    score : Tensor of shape (B,)
        ``-normality + seen + pseudo + residual`` over the heads present;
        higher = more anomalous.
    seen, pseudo, residual : Tensor of shape (B,) or None
        Non-negative abnormality scores of the seen, pseudo and latent-residual
        heads.
    normality : Tensor of shape (B,) or None
        Non-negative normality score: higher = more normal.
    """

    score: Tensor
    seen: Tensor | None
    pseudo: Tensor | None
    residual: Tensor | None
    normality: Tensor | None
