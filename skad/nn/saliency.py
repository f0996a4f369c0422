"""Gradient saliency maps, shared by every detector that localises by gradients.

One implementation, :func:`gradient_saliency`, covers DevNet's recipe (the
absolute input gradient of one score) and Multi-Cue's (input and feature
gradients of several cues); :func:`input_gradient_saliency` is its one-score,
input-only case.
"""

import torch

from .anomaly_map import gaussian_blur, normalize_maps, upsample_maps

__all__ = ["gradient_saliency", "input_gradient_saliency"]


def _last(output):
    return output[-1] if isinstance(output, (list, tuple)) else output


def gradient_saliency(cues_fn, x, *, layer=None, sigma=4.0, quantile=0.99):
    r"""Gradient maps of one or more anomaly cues, normalised, averaged and smoothed.

    With cues :math:`c_1, \dots, c_K` of an image :math:`x` the maps are

    - one input map, :math:`\sum_{\text{channels}} |\partial (\sum_k c_k) / \partial x|`;
    - when ``layer`` is given, one feature map per cue: the channel mean of
      :math:`|\partial c_k / \partial A|`, with :math:`A` the layer's
      activation, upsampled bilinearly to the input size.

    Each map is normalised per image (:func:`normalize_maps`: minimum to 0,
    ``quantile`` to 1, clipped to [0, 1]); the maps are averaged and smoothed
    by a Gaussian of ``sigma`` pixels (:func:`gaussian_blur`). One cue without
    a layer is DevNet's saliency; three cues with the last encoder block as
    layer are Multi-Cue's (four maps).

    Parameters
    ----------
    cues_fn : callable
        Maps images ``(B, C, H, W)`` to cues ``(B,)`` or ``(B, K)``, higher =
        more anomalous. Each image's cues must depend on that image only (true
        for networks in evaluation mode), since the batch is differentiated at
        once.
    x : Tensor of shape (B, C, H, W)
        Images; left untouched.
    layer : torch.nn.Module or None, default=None
        Module whose output activation (its last element when it returns a
        list or tuple, as a feature extractor does) gives the feature maps.
        It must run during ``cues_fn``; when it runs several times (several
        input scales), the upsampled maps of each run are added. ``None``
        uses the input gradient only.
    sigma : float, default=4.0
        Gaussian smoothing in pixels of ``x``.
    quantile : float, default=0.99
        Upper reference of the per-map normalisation.

    Returns
    -------
    maps : Tensor of shape (B, H, W)
        Maps in [0, 1] (before smoothing), higher = more anomalous.

    Examples
    --------
    >>> import torch
    >>> from skad.nn.saliency import gradient_saliency
    >>> x = torch.rand(2, 3, 16, 16)
    >>> maps = gradient_saliency(lambda im: im[:, :, :4, :4].sum(dim=(1, 2, 3)), x, sigma=0)
    >>> maps.shape, bool((maps[:, :4, :4] == 1).all()), bool((maps[:, 8:] == 0).all())
    (torch.Size([2, 16, 16]), True, True)
    """
    x = x.detach().clone().requires_grad_(True)
    activations = []
    handle = None
    if layer is not None:
        handle = layer.register_forward_hook(
            lambda module, inputs, output: activations.append(_last(output))
        )
    try:
        with torch.enable_grad():
            cues = cues_fn(x)
    finally:
        if handle is not None:
            handle.remove()
    if layer is not None and not activations:
        raise ValueError(
            f"layer={type(layer).__name__} did not run while computing the cues; pass a module "
            "that cues_fn calls (e.g. the network's feature extractor), or layer=None."
        )
    cues = cues.reshape(len(x), -1)
    inputs = [x, *activations]
    size = x.shape[-2:]
    input_grad = torch.zeros_like(x)
    maps = []
    n_cues = cues.shape[1]
    with torch.enable_grad():
        for k in range(n_cues):
            grads = torch.autograd.grad(cues[:, k].sum(), inputs, retain_graph=k < n_cues - 1,
                                        allow_unused=True)
            if grads[0] is not None:
                input_grad += grads[0]
            if layer is None:
                continue
            feature_map = torch.zeros(len(x), *size, dtype=x.dtype, device=x.device)
            for grad in grads[1:]:
                if grad is not None:
                    channel_mean = grad.abs().mean(dim=1).to(x.dtype)
                    feature_map += upsample_maps(channel_mean, size)
            maps.append(normalize_maps(feature_map, quantile))
    maps.insert(0, normalize_maps(input_grad.abs().sum(dim=1), quantile))
    return gaussian_blur(torch.stack(maps).mean(dim=0), sigma)


def input_gradient_saliency(score_fn, x, *, sigma=4.0, quantile=0.99):
    """``|d score / d input|`` summed over channels, normalised and smoothed.

    The one-score, input-only case of :func:`gradient_saliency` (DevNet's
    localisation).

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
    return gradient_saliency(score_fn, x, sigma=sigma, quantile=quantile)
