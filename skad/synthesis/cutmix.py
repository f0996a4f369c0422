"""CutMix pseudo-anomalies (DRA recipe, ``ALGORITHMS.md`` section 0.4)."""

import math

import torch
from torch import Tensor

from ._common import (
    check_generator,
    check_images,
    check_pair,
    check_real,
    describe,
    rand,
    uniform,
    uniform_int,
)

__all__ = ["cutmix"]

# Uniform draws per sample, one column each, drawn in a single call so that a
# given generator state always yields the same boxes whatever the batch size.
_AREA, _ASPECT, _SOURCE, _SRC_Y, _SRC_X, _DST_Y, _DST_X = range(7)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(7, 11)
_N_DRAWS = 11


def _hue_rotation(theta):
    """Rotation matrices (B, 3, 3) about the grey axis (1, 1, 1) by angles theta (B,)."""
    # Rodrigues' formula; the rotation keeps the grey component of a colour
    # and turns its chroma, which is what a hue shift does in RGB.
    k = torch.full((3,), 1 / math.sqrt(3), dtype=theta.dtype, device=theta.device)
    cross = torch.tensor(
        [[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]],
        dtype=theta.dtype,
        device=theta.device,
    ) / math.sqrt(3)
    eye = torch.eye(3, dtype=theta.dtype, device=theta.device)
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    return cos * eye + sin * cross + (1 - cos) * torch.outer(k, k)


def _colour_jitter(patches, masks, low, high, factors):
    """Jitter the boxed region of ``patches`` relative to its own statistics.

    ``patches`` (B, C, H, W) holds the source box at its destination place,
    ``masks`` (B, 1, H, W) marks it, ``low``/``high`` (B, C, 1, 1) are the
    per-channel minimum/maximum of each source image, ``factors`` (B, 4) the
    brightness, contrast and saturation factors and the hue angle.
    """
    n_channels = patches.shape[1]
    brightness, contrast, saturation, hue = (f[:, None, None, None] for f in factors.unbind(1))

    # Brightness: scale about each channel's black point (the source image's
    # minimum) instead of about 0, so that the operation is the same for
    # images in [0, 1], [0, 255] or mean/std-normalised.
    x = low + brightness * (patches - low)
    # Contrast: scale about the patch's per-channel mean (a per-channel mean
    # commutes with per-channel affine normalisation, a grey mean would not).
    n_pixels = masks.sum(dim=(2, 3), keepdim=True)
    mean = (x * masks).sum(dim=(2, 3), keepdim=True) / n_pixels
    x = mean + contrast * (x - mean)
    # Saturation: move each colour (measured from the black point) towards or
    # away from its grey level, the unweighted channel mean.
    colour = x - low
    grey = colour.mean(dim=1, keepdim=True)
    colour = grey + saturation * (colour - grey)
    if n_channels == 3:
        colour = torch.einsum("bij,bjhw->bihw", _hue_rotation(hue.flatten()), colour)
    # Stay inside the source's observed value range, as ColorJitter clamps to
    # [0, 1], without knowing what the normalisation is.
    return torch.minimum(torch.maximum(low + colour, low), high)


def cutmix(
    images,
    *,
    sources=None,
    area=(0.02, 0.15),
    aspect=(0.3, 1 / 0.3),
    jitter=0.1,
    generator=None,
):
    """Paste a colour-jittered box cut from another image into each image.

    CutMix pseudo-anomalies as used by DRA [1]_: for every image a box of area
    ``U(area) * H * W`` and aspect ratio (width / height)
    ``exp(U(log aspect[0], log aspect[1]))`` is cut from a random place of a
    random source image, colour-jittered and pasted at an independent random
    place of the image. The pasted box is the anomaly mask.

    Parameters
    ----------
    images : torch.Tensor of shape (B, C, H, W)
        Floating-point images in any value normalisation. Not modified.
    sources : torch.Tensor of shape (N, C, h, w), default=None
        Images to cut boxes from (any N >= 1 and size; cast to the dtype and
        device of ``images``). None uses ``images`` itself; then, when
        B > 1, each image receives a box from a *different* image of the batch.
    area : tuple of float, default=(0.02, 0.15)
        Range of the box area as a fraction of H * W, within (0, 1].
    aspect : tuple of float, default=(0.3, 1 / 0.3)
        Range of the box aspect ratio width / height, sampled log-uniformly.
    jitter : float, default=0.1
        Strength of the colour jitter in [0, 1), applied to brightness,
        contrast, saturation and hue as torchvision's ``ColorJitter(jitter,
        jitter, jitter, jitter)`` would; 0 pastes the box unchanged. See Notes.
    generator : torch.Generator, default=None
        Source of randomness; the draws happen on its device. None creates a
        fresh generator on the device of ``images``, seeded from torch's global
        generator (so :func:`torch.manual_seed` still makes calls
        reproducible).

    Returns
    -------
    new_images : torch.Tensor of shape (B, C, H, W)
        Copies of ``images`` with the jittered boxes pasted in.
    masks : torch.Tensor of shape (B, 1, H, W)
        1.0 inside each pasted box, 0.0 elsewhere, with the dtype of
        ``images``. Every mask holds at least one pixel.

    Notes
    -----
    Box sides are rounded to whole pixels, at least 1, and clipped to both
    the image and the source size, so the realised area can leave ``area``
    slightly for tiny images, extreme aspects or sources smaller than the
    image.

    The colour jitter cannot assume a value range (inputs may be in [0, 1],
    [0, 255] or ImageNet-normalised), so it works relative to statistics of
    the data instead, in this fixed order, each factor drawn per image:

    - brightness: ``low + b * (x - low)`` with ``b ~ U(1 - jitter, 1 + jitter)``
      and ``low`` the per-channel minimum of the source image (its black
      point; for images in [0, 1] with black pixels this is torchvision's
      brightness);
    - contrast: ``m + c * (x - m)`` with ``c ~ U(1 - jitter, 1 + jitter)`` and
      ``m`` the per-channel mean of the box;
    - saturation: the colour ``x - low`` is moved towards (``s < 1``) or away
      from its unweighted channel mean with ``s ~ U(1 - jitter, 1 + jitter)``;
    - hue (C = 3 only): the colour ``x - low`` is rotated about the grey axis
      (1, 1, 1) by ``2 * pi * h`` with ``h ~ U(-jitter, jitter)``, a linear
      stand-in for torchvision's HSV hue shift;
    - the result is clipped to the per-channel range of the source image.

    Every step is equivariant to ``x -> a * x + b_c`` (a common scale a > 0
    and per-channel offsets b_c), so normalising before or after ``cutmix``
    gives the same result; ImageNet's per-channel scales are nearly equal, so
    it holds closely for that normalisation too.

    References
    ----------
    .. [1] C. Ding, G. Pang and C. Shen, "Catching both gray and black swans:
       open-set supervised anomaly detection", CVPR 2022.
       :doi:`10.1109/CVPR52688.2022.00719`

    Examples
    --------
    >>> import torch
    >>> from skad.synthesis import cutmix
    >>> images = torch.rand(4, 3, 32, 32)
    >>> new_images, masks = cutmix(images, generator=torch.Generator().manual_seed(0))
    >>> new_images.shape, masks.shape
    (torch.Size([4, 3, 32, 32]), torch.Size([4, 1, 32, 32]))
    >>> bool((masks.flatten(1).sum(1) >= 1).all())
    True
    """
    # Any number of channels: cutmix works on normalised tensors of any kind.
    check_images(images, gray_or_rgb=False)
    same_pool = sources is None or sources is images
    if sources is None:
        sources = images
    if (
        not isinstance(sources, Tensor)
        or sources.ndim != 4
        or sources.shape[1] != images.shape[1]
        or sources.shape[0] < 1
        or not sources.is_floating_point()
    ):
        raise ValueError(
            "The 'sources' parameter of cutmix must be None or a floating-point tensor "
            f"of shape (N, {images.shape[1]}, h, w) with N >= 1. "
            f"Got {describe(sources)} instead."
        )
    area_lo, area_hi = check_pair(area, "area", low=0.0, high=1.0, closed="right")
    aspect_lo, aspect_hi = check_pair(aspect, "aspect", low=0.0, closed="right")
    check_real(jitter, "jitter", low=0, high=1, closed="left")

    device, dtype = images.device, images.dtype
    sources = sources.to(device=device, dtype=dtype)
    n_images, n_channels, height, width = images.shape
    n_sources, _, src_height, src_width = sources.shape
    if n_images == 0:
        return images.clone(), images.new_zeros((0, 1, height, width))

    generator = check_generator(generator, device)
    # float64 draws so that floor(u * n) is exact for any realistic n.
    u = rand(generator, n_images, _N_DRAWS, device=device, dtype=torch.float64)

    # Box size: sides from area and aspect, rounded, then clipped so the box
    # fits in both the image and the source.
    box_area = uniform(u[:, _AREA], area_lo, area_hi) * height * width
    ratio = torch.exp(uniform(u[:, _ASPECT], math.log(aspect_lo), math.log(aspect_hi)))
    box_h = torch.sqrt(box_area / ratio).round().long().clamp(1, min(height, src_height))
    box_w = torch.sqrt(box_area * ratio).round().long().clamp(1, min(width, src_width))

    if same_pool and n_images > 1:
        # A box from the image itself would be a barely visible anomaly:
        # offset by 1..B-1 so the source is always another image.
        offset = 1 + uniform_int(u[:, _SOURCE], n_images - 1)
        source_index = (torch.arange(n_images, device=device) + offset) % n_images
    else:
        source_index = uniform_int(u[:, _SOURCE], n_sources)
    # Per-image bounds: uniform_int takes a tensor n as well.
    src_y = uniform_int(u[:, _SRC_Y], src_height - box_h + 1)
    src_x = uniform_int(u[:, _SRC_X], src_width - box_w + 1)
    dst_y = uniform_int(u[:, _DST_Y], height - box_h + 1)
    dst_x = uniform_int(u[:, _DST_X], width - box_w + 1)

    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= dst_y[:, None]) & (rows < (dst_y + box_h)[:, None])  # (B, H)
    in_cols = (cols >= dst_x[:, None]) & (cols < (dst_x + box_w)[:, None])  # (B, W)
    masks = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)

    # Gather, for every destination pixel, the source pixel that lands there
    # (clamped outside the box, where it is discarded by the mask); one
    # advanced-indexing call instead of a loop over differently sized boxes.
    src_rows = (rows - dst_y[:, None] + src_y[:, None]).clamp(0, src_height - 1)  # (B, H)
    src_cols = (cols - dst_x[:, None] + src_x[:, None]).clamp(0, src_width - 1)  # (B, W)
    patches = sources[
        source_index[:, None, None], :, src_rows[:, :, None], src_cols[:, None, :]
    ].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

    masks = masks.to(dtype)
    if jitter > 0:
        chosen = sources.index_select(0, source_index)
        low = chosen.amin(dim=(2, 3), keepdim=True)
        high = chosen.amax(dim=(2, 3), keepdim=True)
        factors = torch.stack(
            [
                1 + jitter * (2 * u[:, _BRIGHTNESS] - 1),
                1 + jitter * (2 * u[:, _CONTRAST] - 1),
                1 + jitter * (2 * u[:, _SATURATION] - 1),
                2 * math.pi * jitter * (2 * u[:, _HUE] - 1),
            ],
            dim=1,
        ).to(dtype)
        patches = _colour_jitter(patches, masks, low, high, factors)

    new_images = torch.where(masks.bool(), patches, images)
    return new_images, masks
