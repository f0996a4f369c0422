"""Anomaly maps: upsampling, Gaussian smoothing and normalisation, shared by every detector.

A detector's map comes from its own evidence (patch distances, a segmentation
head, gradients) on a coarse grid or at the network's input size; turning it
into the map that ``localize`` returns (at the input's resolution, smoothed)
happens here, once.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_blur", "normalize_maps", "smoothed_map", "upsample_maps"]


def upsample_maps(maps: Tensor, size) -> Tensor:
    """Bilinear resize of ``(B, h, w)`` maps to ``size = (H, W)`` (``align_corners=False``).

    Parameters
    ----------
    maps : Tensor of shape (B, h, w)
    size : tuple of (int, int)

    Returns
    -------
    Tensor of shape (B, H, W)
    """
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear",
                         align_corners=False)[:, 0]


def smoothed_map(maps: Tensor, size, sigma: float) -> Tensor:
    """Upsample ``(B, h, w)`` maps to ``size`` and smooth them with a Gaussian of ``sigma`` px.

    The recipe of PatchCore's and PaDiM's maps (patch distances on the feature
    grid, bilinear upsampling, ``sigma = 4`` at 224 px).

    Parameters
    ----------
    maps : Tensor of shape (B, h, w)
    size : tuple of (int, int)
    sigma : float
        Standard deviation in pixels of the output.

    Returns
    -------
    Tensor of shape (B, H, W)
    """
    return gaussian_blur(upsample_maps(maps, size), sigma)


def gaussian_blur(maps, sigma):
    """Separable Gaussian smoothing of ``(B, H, W)`` maps with reflect padding.

    Parameters
    ----------
    maps : Tensor of shape (B, H, W)
    sigma : float
        Standard deviation in pixels; ``0`` returns the maps unchanged.
    """
    if sigma <= 0:
        return maps
    radius = max(int(math.ceil(3 * sigma)), 1)
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    if radius < 1:
        return maps
    coords = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def normalize_maps(maps, quantile=0.99):
    """Rescale each map so its minimum is 0 and its ``quantile`` is 1, then clip to [0, 1].

    A map that is flat up to rounding (its spread below ``1e-5`` of its
    ``quantile`` value, e.g. the upsampled gradient of a globally pooled
    feature) becomes all zeros instead of amplified rounding noise.

    Parameters
    ----------
    maps : Tensor of shape (B, H, W)
    quantile : float, default=0.99
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values
    hi = torch.quantile(flat, quantile, dim=1)
    scale = torch.maximum(hi - lo, 1e-5 * hi.abs()).clamp_min(1e-12)
    out = (maps - lo[:, None, None]) / scale[:, None, None]
    return out.clamp(0.0, 1.0)


