"""ADL's network: fused multi-scale features with deviation, classification and mask heads."""

import math
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import align_levels
from .heads import DeviationHead, Normalize
from .outputs import ADLOutput

__all__ = ["UpBlock", "ADLModule"]

_N_LEVELS = 3


def _up_path(channels, n_blocks, fuse_channels):
    """UpBlocks bringing one level to the finest size; returns (module, out channels)."""
    out = channels if fuse_channels is None else min(channels, fuse_channels)
    blocks = [UpBlock(channels if i == 0 else out, out) for i in range(n_blocks)]
    return nn.Sequential(*blocks), (out if n_blocks else channels)


class UpBlock(nn.Module):
    """Learned x2 upsampling: nearest x2, 3x3 convolution, BatchNorm, GLU.

    The ADL authors' "upBlock" (from StackGAN): the convolution produces
    ``2 * out_channels`` maps and the gated linear unit halves them again,
    ``a * sigmoid(b)``, so the block learns which upsampled features to pass.

    Parameters
    ----------
    in_channels : int
        Channels of the input map.
    out_channels : int
        Channels of the output map.

    Examples
    --------
    >>> import torch
    >>> from skad.nn.adl import UpBlock
    >>> UpBlock(8, 4)(torch.zeros(2, 8, 5, 3)).shape
    torch.Size([2, 4, 10, 6])
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        # No bias: the BatchNorm right after would cancel it.
        self.conv = nn.Conv2d(
            self.in_channels, 2 * self.out_channels, kernel_size=3, padding=1, bias=False
        )
        self.bn = nn.BatchNorm2d(2 * self.out_channels)
        self.glu = nn.GLU(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``(B, in_channels, h, w)`` to ``(B, out_channels, 2h, 2w)``."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.glu(self.bn(self.conv(x)))


def _n_up_blocks(ratio):
    # Each UpBlock doubles the size; a ratio that is not a power of two (or a level coarser
    # than the first) gets the nearest count and the final resize in _fused fixes the rest.
    return max(0, round(math.log2(ratio))) if ratio > 0 else 0


class ADLModule(nn.Module):
    """Adaptive deviation learning network (ADL) on a three-level backbone.

    The three feature levels are fused at the resolution of the finest one: the
    second is upsampled by one :class:`UpBlock`, the third by as many as its
    stride ratio needs (``log2(r_3 / r_1)``, two for strides 8 and 32), every
    level keeping its channels, and the maps are concatenated into a
    ``(B, C_1 + C_2 + C_3, h, w)`` fused map. Three heads read it:

    - a deviation head (1x1 conv, absolute value, top-K mean) on the fused map,
      giving the image's anomaly score;
    - a classification head, global average pooling of the last level and a
      linear layer, giving one logit per image;
    - a light segmentation decoder on the fused map: two 3x3 conv-BN-ReLU blocks
      with ``seg_channels`` channels at the fused resolution, a 1x1 conv to one
      logit channel, then a bilinear upsample to exactly the input size.

    The decoder works at the fused resolution (stride 8 for the usual levels)
    and upsamples only the single logit channel, because it runs at every
    training step and full-resolution convolutions would dominate CPU time; the
    pseudo-anomaly masks it learns from are blob-like, so stride-8 detail with
    bilinear interpolation is enough.

    Parameters
    ----------
    extractor : FeatureExtractor
        Backbone returning exactly three levels, finest first, with ``channels``
        and ``reductions`` attributes, e.g.
        ``create_feature_extractor("resnet18", out_indices=(2, 3, 4))``.
    top_k : float in (0, 1], default=0.1
        Fraction of the fused map's cells averaged into the deviation score.
    mean, std : sequence of float or None, default=None
        Input normalisation (ImageNet statistics for pretrained backbones);
        None feeds the images unchanged.
    fuse_channels : int or None, default=None
        Channels the upsampled levels 2 and 3 are reduced to by their first
        UpBlock. ``None`` keeps each level's channels (ADL's code: 896 fused
        channels on resnet18); a small value such as 64 makes the fusion about
        ten times cheaper, which matters on CPU.
    seg_channels : int, default=64
        Width of the segmentation decoder.

    Attributes
    ----------
    normalize : Normalize
        Input normalisation.
    extractor : FeatureExtractor
        The backbone.
    up2, up3 : nn.Sequential
        UpBlocks bringing the second and third levels to the first level's size.
    fused_channels : int
        Channels of the fused map, ``sum(extractor.channels)``.
    deviation_head : DeviationHead
        Patch scores and top-K mean on the fused map.
    classifier : nn.Linear
        Classification head on the pooled last level.
    seg_decoder : nn.Sequential
        Segmentation decoder, fused map to a one-channel logit map at the fused
        resolution.

    Examples
    --------
    >>> import torch
    >>> from skad.nn.adl import ADLModule
    >>> from skad.nn.backbones import create_feature_extractor
    >>> fx = create_feature_extractor("resnet18", pretrained=False, out_indices=(2, 3, 4))
    >>> net = ADLModule(fx).eval()
    >>> dev, logit, seg = net(torch.rand(2, 3, 64, 48))
    >>> dev.shape, logit.shape, seg.shape
    (torch.Size([2]), torch.Size([2]), torch.Size([2, 1, 64, 48]))
    """

    def __init__(self, extractor, *, top_k=0.1, mean=None, std=None, seg_channels=64,
                 fuse_channels=None):
        super().__init__()
        channels = getattr(extractor, "channels", None)
        reductions = getattr(extractor, "reductions", None)
        if channels is None or reductions is None:
            raise ValueError(
                f"extractor={type(extractor).__name__} must have 'channels' and 'reductions' "
                "attributes; build it with skad.nn.backbones.create_feature_extractor(backbone, "
                "out_indices=...) with three levels, e.g. out_indices=(2, 3, 4)."
            )
        if len(channels) != _N_LEVELS or len(reductions) != _N_LEVELS:
            raise ValueError(
                f"extractor must return exactly {_N_LEVELS} feature levels, got "
                f"{len(channels)} (channels={list(channels)}); pass out_indices with three "
                "levels to create_feature_extractor, e.g. out_indices=(2, 3, 4) for strides "
                "8, 16 and 32."
            )
        if isinstance(top_k, bool) or not isinstance(top_k, Real) or not 0 < top_k <= 1:
            raise ValueError(f"top_k={top_k!r} must be a float in (0, 1].")
        if isinstance(seg_channels, bool) or not isinstance(seg_channels, Integral):
            raise ValueError(f"seg_channels={seg_channels!r} must be a positive int.")
        if seg_channels < 1:
            raise ValueError(f"seg_channels={seg_channels!r} must be a positive int.")
        c1, c2, c3 = (int(c) for c in channels)
        r1, r2, r3 = (float(r) for r in reductions)

        self.normalize = Normalize(mean, std)
        self.extractor = extractor
        # fuse_channels=None keeps the channels through the UpBlocks, as the ADL code does
        # (128 + 256 + 512 = 896 for ResNet-18); the detector reduces them for CPU budgets.
        self.up2, o2 = _up_path(c2, _n_up_blocks(r2 / r1), fuse_channels)
        self.up3, o3 = _up_path(c3, _n_up_blocks(r3 / r1), fuse_channels)
        self.fused_channels = c1 + o2 + o3
        self.deviation_head = DeviationHead(self.fused_channels, top_k=top_k)
        self.classifier = nn.Linear(c3, 1)
        self.seg_decoder = nn.Sequential(
            nn.Conv2d(self.fused_channels, seg_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(seg_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(seg_channels, seg_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(seg_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(seg_channels, 1, kernel_size=1),
        )

    def _features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Normalise, extract the three levels and fuse them.

        Parameters
        ----------
        x : Tensor of shape (B, 3, H, W)
            Images in [0, 1].

        Returns
        -------
        levels : list of Tensor
            The extractor's three feature maps, finest first.
        fused : Tensor of shape (B, C_1 + C_2 + C_3, h, w)
            Concatenated levels at the first level's size ``(h, w)``.
        """
        levels = self.extractor(self.normalize(x))
        if len(levels) != _N_LEVELS:
            raise ValueError(
                f"extractor returned {len(levels)} feature levels, expected {_N_LEVELS}; pass "
                "out_indices with three levels to create_feature_extractor, e.g. "
                "out_indices=(2, 3, 4)."
            )
        f1, f2, f3 = levels
        # Odd input sizes make strided levels round up (e.g. 48 px: 6 cells at stride 8
        # but 2 at stride 32, i.e. 8 after two UpBlocks), and non-power-of-two stride
        # ratios cannot be reached by doublings: resize to exactly the first level's size.
        fused = align_levels([f1, self.up2(f2), self.up3(f3)])
        return levels, torch.cat(fused, dim=1)

    def patch_scores(self, x: Tensor) -> Tensor:
        """Non-negative patch deviation scores on the fused map.

        Parameters
        ----------
        x : Tensor of shape (B, 3, H, W)
            Images in [0, 1].

        Returns
        -------
        scores : Tensor of shape (B, 1, h, w)
            Deviation head's patch map at the first level's resolution, whose
            top-K mean is the image score.
        """
        return self.deviation_head.patch_scores(self._features(x)[1])

    def forward(self, x: Tensor) -> ADLOutput:
        """Compute the three heads.

        Parameters
        ----------
        x : Tensor of shape (B, 3, H, W)
            Images in [0, 1].

        Returns
        -------
        ADLOutput
            ``score`` (B,): non-negative deviation scores (the anomaly score);
            ``class_logit`` (B,): classification logits, apply a sigmoid for
            ``p(x)`` (logits, so that the BCE is computed stably);
            ``seg_logit`` (B, 1, H, W): segmentation logits at the input
            resolution.
        """
        levels, fused = self._features(x)
        deviation = self.deviation_head(fused)
        class_logit = self.classifier(levels[-1].mean(dim=(2, 3))).squeeze(1)
        seg_logit = F.interpolate(
            self.seg_decoder(fused), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return ADLOutput(deviation, class_logit, seg_logit)
