"""Static forward graphs of the detectors' scoring, for :func:`skad.export.to_onnx`.

Each graph takes the network's input -- images ``(B, 3, S, S)`` float32 in
[0, 1] (or rows ``(B, n_features)`` for tabular DevNet) -- and returns a tuple:
the image anomaly score ``(B,)`` (``-score_samples``), then, where the
detector's anomaly map is a forward pass, the map ``(B, S, S)``. They compute
what the detectors compute, with the same modules and buffers, written so
that ``torch.export`` traces one graph for every batch size: no Python loop
whose length depends on the batch, no data-dependent shapes, no ``out=``.

Pure torch; the graphs are built by the detectors' ``_export_graph`` hooks.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anomaly_map import gaussian_blur, smoothed_map
from .backbones import align_levels
from .multicue import fuse_cues, raw_cues, squashed_cues

__all__ = [
    "FrozenPatchGraph",
    "FusedCueGraph",
    "PaDiMGraph",
    "PatchCoreGraph",
    "ReferenceScoreGraph",
    "ScoreGraph",
    "SegmentationGraph",
]

#: Distances held at once per image by :class:`PatchCoreGraph`'s search (16 MiB).
_SEARCH_ENTRIES = 2**22


class ScoreGraph(nn.Module):
    """The anomaly score of a module returning a ``score`` field (DevNet, ADL without maps).

    Parameters
    ----------
    module : nn.Module
        Input -> an output with a ``score`` field (:mod:`skad.nn.outputs`).
    """

    output_names = ("anomaly_score",)

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (self.module(x).score.float(),)


class ReferenceScoreGraph(nn.Module):
    """DRA's score with the reference images' feature maps ``M_r`` fixed at export.

    As :meth:`~skad.nn.dra.DRAModule.fixed_reference` does for scoring: the
    references are not re-encoded per batch, and no shape depends on the batch.

    Parameters
    ----------
    module : DRAModule
        The fitted module; its :meth:`~skad.nn.dra.DRAModule.reference_maps`
        are computed once, here, and kept as buffers.
    """

    output_names = ("anomaly_score",)

    def __init__(self, module):
        super().__init__()
        self.module = module
        maps = module.reference_maps() if module.uses_reference else []
        self.n_maps = len(maps)
        for i, m in enumerate(maps):
            self.register_buffer(f"reference{i}", m)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        maps = [getattr(self, f"reference{i}") for i in range(self.n_maps)] or None
        return (self.module(x, maps).score.float(),)


class SegmentationGraph(nn.Module):
    """ADL's score and its segmentation head's smoothed anomaly probability map.

    Parameters
    ----------
    module : skad.nn.adl.ADLModule
        The trained network (its ``score`` and ``seg_logit`` outputs).
    sigma : float
        Gaussian smoothing of the map, in pixels.
    """

    output_names = ("anomaly_score", "anomaly_map")

    def __init__(self, module, sigma):
        super().__init__()
        self.module = module
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.module(x)
        seg = torch.sigmoid(out.seg_logit[:, 0].float())
        return out.score.float(), gaussian_blur(seg, self.sigma)


class FusedCueGraph(nn.Module):
    """Multi-Cue's fused score (and, optionally, the segmentation map) of ADL's outputs.

    Parameters
    ----------
    module : skad.nn.adl.ADLModule
        The trained network.
    deviation_reference : pair of float
        ``(m, r)`` of the deviation cue.
    cue_weights : array-like of shape (3,)
        Weights of the deviation, uncertainty and segmentation cues.
    sigma : float or None
        Smoothing of the segmentation map; ``None`` returns no map.
    """

    def __init__(self, module, deviation_reference, cue_weights, sigma=None):
        super().__init__()
        self.module = module
        self.deviation_reference = tuple(float(v) for v in deviation_reference)
        self.cue_weights = tuple(float(w) for w in cue_weights)
        self.sigma = None if sigma is None else float(sigma)
        self.output_names = ("anomaly_score",) if sigma is None else (
            "anomaly_score", "anomaly_map")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.module(x)
        # float64 as the detector computes the cues: the squashes' logs near 0 stay exact
        raw = raw_cues(out).double()
        fused = fuse_cues(squashed_cues(raw, self.deviation_reference), self.cue_weights)
        if self.sigma is None:
            return (fused.float(),)
        seg = torch.sigmoid(out.seg_logit[:, 0].float())
        return fused.float(), gaussian_blur(seg, self.sigma)


class FrozenPatchGraph(nn.Module):
    """Score and smoothed distance map of a :class:`~skad.nn.frozen.FrozenPatchModule`.

    The module's own forward, traced as it is; the map as the frozen-feature
    detectors' ``localize`` makes it (bilinear upsampling, Gaussian smoothing).

    Parameters
    ----------
    module : skad.nn.frozen.FrozenPatchModule
        Returns ``score`` and ``distances``.
    image_size : int
        Side of the input images.
    sigma : float
        Gaussian smoothing of the map, in pixels.
    """

    output_names = ("anomaly_score", "anomaly_map")

    def __init__(self, module, image_size, sigma):
        super().__init__()
        self.module = module
        self.image_size = int(image_size)
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.module(x)
        size = (self.image_size, self.image_size)
        return out.score.float(), smoothed_map(out.distances.float(), size, self.sigma)


class PatchCoreGraph(nn.Module):
    """PatchCore's score and map: nearest memory-bank patch of every patch, in bank blocks.

    The search runs over fixed blocks of the (fixed) memory bank with all of
    the batch's patches at once, so its shape depends on the batch size only
    through one dimension; the result equals
    :func:`~skad.nn.patchcore.nearest_neighbours` up to float32 rounding.

    Parameters
    ----------
    module : skad.nn.patchcore.PatchCoreModule
        With its memory bank set.
    image_size : int
        Side of the input images.
    sigma : float
        Gaussian smoothing of the map, in pixels.
    """

    output_names = ("anomaly_score", "anomaly_map")

    def __init__(self, module, image_size, sigma):
        super().__init__()
        self.embedding = module.embedding
        self.register_buffer("memory_bank", module.memory_bank.detach().clone())
        self.register_buffer("bank_sq_norms", module.bank_sq_norms.detach().clone())
        self.reweight = module.reweight_neighbors is not None
        self.register_buffer("bank_neighbours", module.bank_neighbours.detach().clone())
        self.image_size = int(image_size)
        self.sigma = float(sigma)
        grid = math.ceil(self.image_size / self.embedding.reduction) ** 2
        self.block = max(1, min(len(self.memory_bank), _SEARCH_ENTRIES // grid))

    def _nearest(self, queries: Tensor, with_index: bool):
        """Squared distance ``|b|^2 - 2 q.b`` of the nearest bank row (without ``|q|^2``)."""
        best = best_index = None
        for start in range(0, len(self.memory_bank), self.block):
            bank = self.memory_bank[start:start + self.block]
            d = torch.addmm(self.bank_sq_norms[start:start + self.block], queries, bank.T,
                            alpha=-2.0)
            if not with_index:
                d = d.amin(dim=1)
                best = d if best is None else torch.minimum(best, d)
                continue
            d, i = d.min(dim=1)
            i = i + start
            if best is None:
                best, best_index = d, i
            else:
                closer = d < best  # ties keep the earlier block, as the reference search
                best, best_index = torch.where(closer, d, best), torch.where(closer, i, best_index)
        return best, best_index

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.embedding(x)
        b, c, h, w = embedding.shape
        patches = embedding.permute(0, 2, 3, 1).reshape(-1, c).float()
        d, _ = self._nearest(patches, with_index=False)
        dist = (d + patches.pow(2).sum(1)).clamp_min(0.0).sqrt().reshape(b, h * w)
        scores, where = dist.max(dim=1)
        if self.reweight:
            grid = patches.reshape(b, h * w, c)
            worst = torch.gather(grid, 1, where[:, None, None].expand(b, 1, c))[:, 0]
            nearest = self._nearest(worst, with_index=True)[1]
            support = self.memory_bank[self.bank_neighbours[nearest]]  # (B, n, C)
            spread = torch.linalg.vector_norm(worst[:, None] - support, dim=2)
            scores = scores * (1.0 - torch.softmax(spread, dim=1)[:, 0])
        size = (self.image_size, self.image_size)
        return scores, smoothed_map(dist.reshape(b, h, w), size, self.sigma)


class PaDiMGraph(nn.Module):
    """PaDiM's score and map: each selected patch feature's Mahalanobis distance.

    The channel subset is taken from each backbone level with fixed indices
    (computed once here, where the module selects them from the data).

    Parameters
    ----------
    module : skad.nn.padim.PaDiMModule
        With its Gaussians set.
    image_size : int
        Side of the input images.
    sigma : float
        Gaussian smoothing of the map, in pixels.
    """

    output_names = ("anomaly_score", "anomaly_map")

    def __init__(self, module, image_size, sigma):
        super().__init__()
        self.embedding = module.embedding
        self.register_buffer("mean", module.mean.detach().clone())
        self.register_buffer("precision", module.precision.detach().clone())
        self.image_size = int(image_size)
        self.sigma = float(sigma)
        index = module.channel_index.cpu()
        ascending, order = torch.sort(index)
        start, local = 0, []
        for i, channels in enumerate(self.embedding.extractor.channels):
            keep = ascending[(ascending >= start) & (ascending < start + channels)] - start
            self.register_buffer(f"level{i}_channels", keep.to(module.mean.device))
            local.append(len(keep))
            start += channels
        self.level_sizes = tuple(local)
        self.register_buffer("reorder", torch.argsort(order).to(module.mean.device))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        levels = self.embedding.levels(x)
        selected = [f.index_select(1, getattr(self, f"level{i}_channels"))
                    for i, f in enumerate(levels) if self.level_sizes[i]]
        out = torch.cat(align_levels(selected, levels[0].shape[-2:]), dim=1)
        out = out.index_select(1, self.reorder)
        if self.embedding.pool_size > 1:
            k = self.embedding.pool_size
            out = F.avg_pool2d(out, k, 1, k // 2)
        b, d, h, w = out.shape
        delta = out.float().permute(2, 3, 0, 1).reshape(h * w, b, d) - self.mean[:, None, :]
        dist = (torch.bmm(delta, self.precision) * delta).sum(dim=2).clamp_min(0.0).sqrt()
        dist = dist.T.reshape(b, h, w)
        size = (self.image_size, self.image_size)
        return dist.flatten(1).max(dim=1).values, smoothed_map(dist, size, self.sigma)
