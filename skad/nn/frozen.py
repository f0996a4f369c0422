"""Frozen patch features and the scoring networks built on them (PatchCore, PaDiM)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import align_levels
from .heads import Normalize
from .outputs import PatchScoreOutput

__all__ = ["FrozenBackbone", "FrozenLevels", "FrozenPatchModule", "PatchEmbedding"]


def _select_channels(x, index):
    """``x.index_select(1, index)`` that keeps a channels-last ``x`` channels-last."""
    return x.permute(0, 2, 3, 1).index_select(3, index).permute(0, 3, 1, 2)


class FrozenBackbone(nn.Module):
    """A backbone frozen for good: no gradients, and BatchNorm statistics that never move.

    Parameters
    ----------
    extractor : FeatureExtractor
        Backbone returning the selected levels, finest first.
    mean, std : sequence of float or None, default=None
        Input normalisation (ImageNet statistics for pretrained backbones).
    """

    def __init__(self, extractor, *, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.extractor = extractor.eval().requires_grad_(False)

    def train(self, mode=True):
        # frozen: BatchNorm statistics must never move, whatever mode a caller sets
        super().train(mode)
        self.extractor.eval()
        return self

    def levels(self, x: Tensor) -> list[Tensor]:
        """The extractor's levels of images ``x`` in [0, 1], finest first."""
        return self.extractor(self.normalize(x))


class PatchEmbedding(FrozenBackbone):
    """Frozen multi-level patch features, aligned at the finest level and locally averaged.

    The coarser levels of the extractor are upsampled bilinearly to the
    finest level's grid, the levels are concatenated along channels, and each
    position is averaged over its ``pool_size x pool_size`` neighbourhood
    (stride 1, zero padding counted): PatchCore's locally aware patch
    features [1]_, and PaDiM's embedding [2]_ with ``pool_size=1``.

    Parameters
    ----------
    extractor : FeatureExtractor
        Backbone returning the selected levels, finest first.
    mean, std : sequence of float or None, default=None
        Input normalisation (ImageNet statistics for pretrained backbones).
    pool_size : int, default=3
        Side of the local averaging window; ``1`` disables it.

    Attributes
    ----------
    channels : int
        Channels of the embedding, the sum over levels.
    reduction : int
        Stride of the embedding's grid with respect to the input (the finest level's).

    References
    ----------
    .. [1] K. Roth et al., "Towards total recall in industrial anomaly detection",
       CVPR 2022. :doi:`10.1109/CVPR52688.2022.01392`
    .. [2] T. Defard et al., "PaDiM: a patch distribution modeling framework for
       anomaly detection and localization", ICPR Workshops 2020.
       :doi:`10.1007/978-3-030-68799-1_35`
    """

    def __init__(self, extractor, *, mean=None, std=None, pool_size=3):
        super().__init__(extractor, mean=mean, std=std)
        self.pool_size = int(pool_size)
        self.channels = sum(extractor.channels)
        self.reduction = extractor.reductions[0]

    def forward(self, x: Tensor, channel_index: Tensor | None = None) -> Tensor:
        """Embed a batch.

        Parameters
        ----------
        x : Tensor of shape (B, 3, H, W)
            Images in [0, 1].
        channel_index : Tensor of shape (d,), dtype int64, default=None
            Channels of the embedding to return, in that order; None returns
            them all. Each level's share is taken before the level is
            upsampled, which gives the same values as selecting from the
            whole embedding for less work.

        Returns
        -------
        Tensor of shape (B, channels or d, H / reduction, W / reduction)
        """
        levels = self.levels(x)
        size = levels[0].shape[-2:]
        order = None
        if channel_index is not None:
            levels, order = self._select(levels, channel_index)
        out = torch.cat(align_levels(levels, size), dim=1)
        if order is not None:
            out = _select_channels(out, order)
        if self.pool_size > 1:
            out = F.avg_pool2d(out, self.pool_size, 1, self.pool_size // 2)
        return out

    @staticmethod
    def _select(levels, channel_index):
        """Each level's channels among ``channel_index``; returns (levels, reorder or None)."""
        ascending, order = torch.sort(channel_index)
        start, selected = 0, []
        for f in levels:
            stop = start + f.shape[1]
            local = ascending[(ascending >= start) & (ascending < stop)] - start
            if len(local):
                selected.append(_select_channels(f, local))
            start = stop
        if torch.equal(ascending, channel_index):
            return selected, None
        return selected, torch.argsort(order)


class FrozenLevels(FrozenBackbone):
    """A frozen backbone's feature levels, normalised input in, one tensor per level out.

    Unlike :class:`PatchEmbedding` the levels stay apart, at their own
    resolutions (BGAD fits one flow per level).

    Parameters
    ----------
    extractor : FeatureExtractor
        Backbone returning the selected levels, finest first.
    mean, std : sequence of float or None, default=None
        Input normalisation (ImageNet statistics for pretrained backbones).

    Attributes
    ----------
    channels : tuple of int
        Channels of each level.
    reductions : tuple of int
        Stride of each level with respect to the input.
    """

    def __init__(self, extractor, *, mean=None, std=None):
        super().__init__(extractor, mean=mean, std=std)
        self.channels = tuple(extractor.channels)
        self.reductions = tuple(extractor.reductions)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """The levels of images ``x`` in [0, 1], ``(B, C_l, H / r_l, W / r_l)`` each."""
        return tuple(self.levels(x))


class FrozenPatchModule(nn.Module):
    """Base of the training-free scoring networks: frozen patch embedding, then patch distances.

    Takes images in [0, 1] of shape ``(B, 3, S, S)`` and returns a
    :class:`~skad.nn.outputs.PatchScoreOutput`: the image anomaly scores
    ``score`` ``(B,)`` and the patch-distance maps ``distances`` ``(B, h, w)``
    on the embedding's grid. Subclasses
    implement :meth:`score_embedding`; :meth:`embed` may select channels.

    Parameters
    ----------
    embedding : PatchEmbedding
    """

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def embed(self, x: Tensor) -> Tensor:
        """The features :meth:`score_embedding` takes, ``(B, C, h, w)``, for images ``x``."""
        return self.embedding(x)

    def score_embedding(self, embedding: Tensor) -> PatchScoreOutput:
        """Image scores ``(B,)`` and distance maps ``(B, h, w)`` of :meth:`embed`'s output."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> PatchScoreOutput:
        """Score a batch.

        Parameters
        ----------
        x : Tensor of shape (B, 3, S, S)
            Images in [0, 1].

        Returns
        -------
        PatchScoreOutput
            ``score`` (B,): image anomaly scores, higher = more anomalous;
            ``distances`` (B, S / r, S / r): distance of each patch to the
            normal model (``r`` the embedding's stride).
        """
        return self.score_embedding(self.embed(x))
