"""Input-gradient saliency maps, shared by every detector that localises by gradients."""

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "normalize_maps", "input_gradient_saliency"]


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

    Parameters
    ----------
    maps : Tensor of shape (B, H, W)
    quantile : float, default=0.99
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values
    hi = torch.quantile(flat, quantile, dim=1)
    scale = (hi - lo).clamp_min(1e-12)
    out = (maps - lo[:, None, None]) / scale[:, None, None]
    return out.clamp(0.0, 1.0)


def input_gradient_saliency(score_fn, x, *, sigma=4.0, quantile=0.99):
    """``|d score / d input|`` summed over channels, normalised and smoothed.

    Parameters
    ----------
    score_fn : callable
        Maps ``(B, C, H, W)`` images to ``(B,)`` anomaly scores; each score must
        depend on its own image only (true for networks in evaluation mode).
    x : Tensor of shape (B, C, H, W)
        Images.
    sigma : float, default=4.0
        Gaussian smoothing in pixels of ``x``.
    quantile : float, default=0.99
        Upper reference of the per-image normalisation.

    Returns
    -------
    Tensor of shape (B, H, W)
        Maps in [0, 1] (before smoothing), higher = more anomalous.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scores = score_fn(x)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    maps = normalize_maps(grad.abs().sum(dim=1), quantile)
    return gaussian_blur(maps, sigma)
