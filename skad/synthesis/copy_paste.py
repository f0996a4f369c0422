"""Copy-paste pseudo-anomalies from labelled anomalies (BGAD's RPAG, ``ALGORITHMS.md`` §4).

Everything is vectorised over the batch and runs on the device of the
images; randomness comes from an explicit :class:`torch.Generator`.
"""

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ._augment import level_histograms, smooth3x3
from ._common import (
    LUMA,
    check_generator,
    check_images,
    check_int,
    check_real,
    choose_ops,
    describe,
    rand,
    randn,
    uniform,
    uniform_int,
)

__all__ = ["copy_paste"]

_OPS = (
    "flip",
    "rotate90",
    "transpose",
    "noise",
    "distortion",
    "brightness",
    "sharpness",
    "translate",
    "blur",
)
_N_OPS = len(_OPS)


def _to_gray(x):
    """(..., C, H, W) with C in {1, 3} -> (..., 1, H, W) luma."""
    if x.shape[-3] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device)[:, None, None]
    return (x * weights).sum(dim=-3, keepdim=True)


def _sample_index(weights, u):
    """One index per row of non-negative ``weights`` (B, M), by inverse CDF at ``u`` (B,).

    torch.multinomial would need a generator on the weights' device; the
    uniforms come from ``rand`` instead, so any generator drives any device.
    Rows must have a positive sum.
    """
    cdf = weights.double().cumsum(1)
    target = (u.double() * cdf[:, -1])[:, None]
    index = torch.searchsorted(cdf, target, right=True)[:, 0]
    return index.clamp_(max=weights.shape[1] - 1)


def _bounding_boxes(masks):
    """Tight boxes of non-empty (B, S, T) bool masks: (top, left, height, width) (B,) each."""
    rows, cols = masks.any(2), masks.any(1)
    n_rows, n_cols = rows.shape[1], cols.shape[1]
    top = rows.to(torch.uint8).argmax(1)
    bottom = n_rows - 1 - rows.flip(1).to(torch.uint8).argmax(1)
    left = cols.to(torch.uint8).argmax(1)
    right = n_cols - 1 - cols.flip(1).to(torch.uint8).argmax(1)
    return top, left, bottom - top + 1, right - left + 1


def _shift(x, dy, dx):
    """Shift (n, C + 1, S, S) by integer (dy, dx) (n,) each, without wrap-around.

    The patch channels replicate the canvas edge (they are context, and a
    black band would bleed into blurs); the mask channel is zero-filled.
    """
    size = x.shape[-1]
    pos = torch.arange(size, device=x.device)
    src_y, src_x = pos[None, :] - dy[:, None], pos[None, :] - dx[:, None]
    valid = ((src_y >= 0) & (src_y < size))[:, :, None] & ((src_x >= 0) & (src_x < size))[:, None]
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    out = x[batch, :, src_y.clamp(0, size - 1)[:, :, None], src_x.clamp(0, size - 1)[:, None, :]]
    out = out.permute(0, 3, 1, 2).contiguous()
    out[:, -1] *= valid.to(x.dtype)
    return out


# Ops on sub-batches of the canvas x (n, C + 1, S, S): the anomaly's box in
# the first C channels, its mask in the last; p (n, 2) float64 uniforms.
# Geometric ops move patch and mask together, photometric ones the patch only.
def _op_flip(x, p, generator):
    horizontal = (p[:, 0] < 0.5)[:, None, None, None]
    return torch.where(horizontal, x.flip(-1), x.flip(-2))


def _op_rotate90(x, p, generator):
    turns = uniform_int(p[:, 0], 3) + 1
    out = x.clone()
    for k in (1, 2, 3):
        idx = (turns == k).nonzero()[:, 0]
        if idx.numel() > 0:
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    return out


def _op_transpose(x, p, generator):
    return x.transpose(-1, -2).contiguous()


def _op_noise(x, p, generator):
    std = uniform(p[:, 0], 0.02, 0.08)[:, None, None, None].to(x.dtype)
    noise = randn(generator, *x[:, :-1].shape, device=x.device, dtype=x.dtype)
    patch = (x[:, :-1] + std * noise).clamp_(0.0, 1.0)
    return torch.cat([patch, x[:, -1:]], dim=1)


def _op_distortion(x, p, generator):
    # Elastic-style warp: a random 4x4 displacement lattice, bicubically
    # upsampled to a smooth field, of amplitude 3-8% of the anomaly's extent
    # (imgaug's PiecewiseAffine/ElasticTransformation family, simplified).
    n, _, size, _ = x.shape
    _, _, box_h, box_w = _bounding_boxes(x[:, -1] > 0.5)
    extent = torch.maximum(box_h, box_w).to(x.dtype)
    amplitude = uniform(p[:, 0], 0.03, 0.08).to(x.dtype) * extent * (2.0 / size)
    coarse = rand(generator, n, 2, 4, 4, device=x.device, dtype=x.dtype) * 2.0 - 1.0
    field = nnf.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    field = field * amplitude[:, None, None, None]
    pos = torch.linspace(-1.0 + 1.0 / size, 1.0 - 1.0 / size, size, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.broadcast_tensors(pos[None, :], pos[:, None]), dim=-1)
    grid = grid[None] + field.permute(0, 2, 3, 1)
    # Border padding: the canvas edge is context (the mask is zero there, as
    # the margin keeps every mask pixel away from it).
    return nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _op_brightness(x, p, generator):
    factor = uniform(p[:, 0], 0.6, 1.4)[:, None, None, None].to(x.dtype)
    return torch.cat([(x[:, :-1] * factor).clamp_(0.0, 1.0), x[:, -1:]], dim=1)


def _op_sharpness(x, p, generator):
    # torchvision's sharpness: blend with the 3x3-smoothed copy, factor > 1.
    factor = uniform(p[:, 0], 1.5, 3.0)[:, None, None, None].to(x.dtype)
    patch = x[:, :-1]
    sharp = torch.lerp(smooth3x3(patch), patch, factor).clamp_(0.0, 1.0)
    return torch.cat([sharp, x[:, -1:]], dim=1)


def _op_translate(x, p, generator):
    # Shift the content by up to 20% of the anomaly's box and crop the mask
    # to the original box (imgaug's Affine(translate_percent) on the cut
    # patch). The paste position is random anyway; what this adds is
    # partially cut-off anomalies.
    top, left, box_h, box_w = _bounding_boxes(x[:, -1] > 0.5)
    dy = (uniform(p[:, 0], -0.2, 0.2) * box_h).round().long()
    dx = (uniform(p[:, 1], -0.2, 0.2) * box_w).round().long()
    shifted = _shift(x, dy, dx)
    pos = torch.arange(x.shape[-1], device=x.device)
    inside_y = (pos[None, :] >= top[:, None]) & (pos[None, :] < (top + box_h)[:, None])
    inside_x = (pos[None, :] >= left[:, None]) & (pos[None, :] < (left + box_w)[:, None])
    shifted[:, -1] *= (inside_y[:, :, None] & inside_x[:, None, :]).to(x.dtype)
    return shifted


def _op_blur(x, p, generator):
    # Gaussian blur of the patch, sigma in [0.5, 1.5] px per image, as one
    # grouped separable convolution over the whole sub-batch.
    n, channels, size, _ = x.shape
    n_patch = channels - 1
    sigma = uniform(p[:, 0], 0.5, 1.5).to(x.dtype)
    radius = 4
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(n_patch, dim=0)
    patch = x[:, :-1].reshape(1, n * n_patch, size, size)
    patch = nnf.pad(patch, (radius, radius, radius, radius), mode="replicate")
    patch = nnf.conv2d(patch, kernel[:, None, :, None], groups=n * n_patch)
    patch = nnf.conv2d(patch, kernel[:, None, None, :], groups=n * n_patch)
    return torch.cat([patch.view(n, n_patch, size, size), x[:, -1:]], dim=1)


_OP_FUNCS = (
    _op_flip,
    _op_rotate90,
    _op_transpose,
    _op_noise,
    _op_distortion,
    _op_brightness,
    _op_sharpness,
    _op_translate,
    _op_blur,
)
# Ops after which the mask can lose all its pixels (then the op is undone).
_MAY_EMPTY = ("distortion", "translate")


def _otsu_foreground(gray):
    """Foreground (B, H, W) bool of (B, 1, H, W) images in [0, 1] by Otsu thresholding.

    Otsu splits the grey levels into two classes; which one is the object is
    not known, so the class holding fewer of the image's border pixels is
    taken as foreground (backgrounds usually surround objects).
    """
    levels = (gray[:, 0] * 255.0).round_().clamp_(0, 255).long()
    prob = level_histograms(levels[:, None])[:, 0]
    prob = prob / prob.sum(1, keepdim=True)
    omega = prob.cumsum(1)
    mu = (prob * torch.arange(256, device=gray.device, dtype=torch.float64)).cumsum(1)
    between = (mu[:, -1:] * omega - mu) ** 2 / (omega * (1.0 - omega)).clamp(min=1e-12)
    threshold = between.argmax(1)
    bright = levels > threshold[:, None, None]
    border = torch.cat(
        [bright[:, 0], bright[:, -1], bright[:, 1:-1, 0], bright[:, 1:-1, -1]], dim=1
    ).double()
    background_is_bright = border.mean(1) > 0.5
    return torch.where(background_is_bright[:, None, None], ~bright, bright)


def copy_paste(
    images,
    anomalies,
    anomaly_masks,
    *,
    n_augmentations=3,
    foreground_threshold=None,
    generator=None,
):
    """Paste augmented cut-outs of labelled anomalies onto the foreground of images.

    BGAD's RPAG pseudo-anomalies [1]_: for every image a labelled anomaly is
    drawn at random, the bounding box of its mask is cut out, patch and mask
    are augmented jointly by ``n_augmentations`` distinct random ops, and the
    masked pixels of the patch are pasted at a random foreground location of
    the image.

    Parameters
    ----------
    images : torch.Tensor of shape (B, C, H, W)
        Floating-point normal images in [0, 1] with C in {1, 3}, *before*
        normalisation. Not modified.
    anomalies : torch.Tensor of shape (N, C', h, w)
        Images containing labelled anomalies, in [0, 1], C' in {1, 3} (RGB
        anomalies are converted to grayscale for grayscale images and vice
        versa); any size. Cast to the dtype and device of ``images``.
    anomaly_masks : torch.Tensor of shape (N, 1, h, w) or (N, h, w)
        Their anomaly masks; non-zero marks the anomaly. Anomalies with an
        empty mask are never drawn; at least one mask must be non-empty.
    n_augmentations : int, default=3
        Number of distinct augmentations drawn per image, in [0, 9], from:
        flip (horizontal or vertical), rotation by 90, 180 or 270 degrees,
        transposition, Gaussian noise (std in [0.02, 0.08]), distortion (a
        smooth random displacement of 3-8% of the anomaly's extent),
        brightness (×[0.6, 1.4]), sharpening (factor in [1.5, 3]),
        translation (up to 20% of the anomaly's box, cropping what leaves it)
        and Gaussian blur (sigma in [0.5, 1.5] px). Applied in that order.
    foreground_threshold : float or None, default=None
        Foreground = pixels whose grayscale value is above this threshold.
        None thresholds each image with Otsu's method and takes as
        foreground the class owning fewer border pixels. Images without
        foreground receive their anomaly anywhere.
    generator : torch.Generator, default=None
        Source of randomness; draws happen on its device. None creates a
        fresh generator seeded from torch's global generator.

    Returns
    -------
    new_images : torch.Tensor of shape (B, C, H, W)
        Copies of ``images`` with the anomalies pasted in.
    masks : torch.Tensor of shape (B, 1, H, W)
        Masks of the pasted pixels, values in {0, 1}, with the dtype of
        ``images``. Every mask holds at least one pixel.

    See Also
    --------
    PerlinAnomalySynthesizer : Texture anomalies in Perlin-noise masks.
    cutmix : Box-shaped pseudo-anomalies cut from normal images.

    Notes
    -----
    Placement: a pixel of the augmented anomaly mask is drawn uniformly and
    put on a uniformly drawn foreground pixel, among the positions that keep
    the anomaly's whole box inside the image (along each axis where it fits).
    That pixel always lands inside the image, so masks are never empty, and
    on the foreground whenever the image has foreground reachable this way.

    Distortion and translation can, for thin masks, move every mask pixel
    out of the patch; they are then undone for that image. The patch is
    pasted without blending, as in BGAD.

    References
    ----------
    .. [1] X. Yao, R. Li, J. Zhang, J. Sun and C. Zhang, "Explicit Boundary
       Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly
       Detection", CVPR 2023.

    Examples
    --------
    >>> import torch
    >>> from skad.synthesis import copy_paste
    >>> images = torch.rand(4, 3, 32, 32)
    >>> anomalies = torch.rand(2, 3, 32, 32)
    >>> anomaly_masks = torch.zeros(2, 1, 32, 32)
    >>> anomaly_masks[:, :, 8:16, 10:20] = 1
    >>> new_images, masks = copy_paste(
    ...     images, anomalies, anomaly_masks, generator=torch.Generator().manual_seed(0)
    ... )
    >>> new_images.shape, bool((masks.flatten(1).sum(1) > 0).all())
    (torch.Size([4, 3, 32, 32]), True)
    """
    check_images(images)
    batch, n_channels, height, width = images.shape
    device, dtype = images.device, images.dtype
    if not (
        isinstance(anomalies, Tensor)
        and anomalies.ndim == 4
        and anomalies.shape[1] in (1, 3)
        and anomalies.shape[0] >= 1
    ):
        raise ValueError(
            "The 'anomalies' parameter must be a tensor of shape (N, C, h, w) with N >= 1 and "
            f"C in {{1, 3}}. Got {describe(anomalies)} instead."
        )
    n_anomalies, _, src_h, src_w = anomalies.shape
    if isinstance(anomaly_masks, Tensor) and anomaly_masks.ndim == 3:
        anomaly_masks = anomaly_masks[:, None]
    if not (
        isinstance(anomaly_masks, Tensor) and anomaly_masks.shape == (n_anomalies, 1, src_h, src_w)
    ):
        raise ValueError(
            f"The 'anomaly_masks' parameter must be a tensor of shape ({n_anomalies}, 1, "
            f"{src_h}, {src_w}) matching 'anomalies'. Got {describe(anomaly_masks)} instead."
        )
    n_aug = check_int(n_augmentations, "n_augmentations", low=0, high=_N_OPS)
    check_real(foreground_threshold, "foreground_threshold", allow_none=True)
    generator = check_generator(generator, device)

    source_masks = anomaly_masks.to(device) != 0
    valid = source_masks.flatten(1).any(1).nonzero()[:, 0]
    if valid.numel() == 0:
        raise ValueError("Every anomaly mask in 'anomaly_masks' is empty.")
    sources = anomalies.to(device=device, dtype=dtype)
    if n_channels == 1:
        sources = _to_gray(sources)
    elif sources.shape[1] == 1:
        sources = sources.expand(-1, 3, -1, -1)

    # Fixed-size blocks of draws first: same generator state, same picks.
    u = rand(generator, batch, 3, device=device, dtype=torch.float64)
    chosen, params = choose_ops(generator, batch, _N_OPS, n_aug, device=device)

    # Cut each image's anomaly box, with a margin of its surroundings, into a
    # square canvas large enough for every box (square so that rotations and
    # transposition keep the shape); the mask is an extra channel. The
    # surroundings give blur, sharpening and distortion real context at the
    # anomaly's edge instead of a black frame; the mask is kept zero there.
    pick = valid[uniform_int(u[:, 0], valid.numel())]
    top, left, box_h, box_w = _bounding_boxes(source_masks[:, 0])
    top, left, box_h, box_w = top[pick], left[pick], box_h[pick], box_w[pick]
    extent = int(torch.maximum(box_h, box_w).max())
    # Distortion moves pixels by at most 8% of the extent: 10% + 1 suffices.
    margin = math.ceil(0.1 * extent) + 1
    size = extent + 2 * margin
    pos = torch.arange(size, device=device) - margin
    rows, cols = top[:, None] + pos, left[:, None] + pos
    stacked = torch.cat([sources, source_masks.to(dtype)], dim=1)
    canvas = stacked[
        pick[:, None, None],
        :,
        rows.clamp(0, src_h - 1)[:, :, None],
        cols.clamp(0, src_w - 1)[:, None, :],
    ].permute(0, 3, 1, 2)
    # Clamped (replicated) rows/columns must not replicate mask pixels.
    in_source = ((rows >= 0) & (rows < src_h))[:, :, None] & ((cols >= 0) & (cols < src_w))[:, None]
    canvas[:, -1] *= in_source.to(dtype)

    for k, (name, op) in enumerate(zip(_OPS, _OP_FUNCS)):
        idx = chosen[:, k].nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        result = op(canvas[idx], params[idx, k], generator)
        if name in _MAY_EMPTY:
            keep = (result[:, -1] > 0.5).flatten(1).any(1)
            result = torch.where(keep[:, None, None, None], result, canvas[idx])
        canvas[idx] = result
    patch_masks = canvas[:, -1] > 0.5
    patch_top, patch_left, patch_h, patch_w = _bounding_boxes(patch_masks)

    # Reference pixel of each anomaly, and where it lands: on the foreground,
    # within the range keeping the anomaly's box inside the image.
    ref = _sample_index(patch_masks.flatten(1).to(torch.float64), u[:, 1])
    ref_y, ref_x = ref // size, ref % size
    gray = _to_gray(images)
    if foreground_threshold is None:
        foreground = _otsu_foreground(gray)
    else:
        foreground = gray[:, 0] > foreground_threshold

    def axis_range(ref_pos, box_start, box_len, length):
        offset = ref_pos - box_start  # reference position inside the box
        fits = box_len <= length
        low = torch.where(fits, offset, 0)
        high = torch.where(fits, length - box_len + offset, length - 1)
        axis = torch.arange(length, device=device)
        return (axis[None, :] >= low[:, None]) & (axis[None, :] <= high[:, None])

    allowed = (
        axis_range(ref_y, patch_top, patch_h, height)[:, :, None]
        & axis_range(ref_x, patch_left, patch_w, width)[:, None, :]
    )
    target = allowed & foreground
    # No reachable foreground: anywhere the box fits.
    target = torch.where(target.flatten(1).any(1)[:, None, None], target, allowed)
    land = _sample_index(target.flatten(1).to(torch.float64), u[:, 2])
    shift_y, shift_x = land // width - ref_y, land % width - ref_x

    # Paste the masked canvas pixels at their shifted places (flat indices,
    # only the K anomalous pixels are touched).
    points = patch_masks.nonzero()
    pb, py, px = (
        points[:, 0],
        points[:, 1] + shift_y[points[:, 0]],
        points[:, 2] + shift_x[points[:, 0]],
    )
    keep = (py >= 0) & (py < height) & (px >= 0) & (px < width)
    points, pb, py, px = points[keep], pb[keep], py[keep], px[keep]
    channels = torch.arange(n_channels, device=device)[None, :]
    dest = ((pb[:, None] * n_channels + channels) * height + py[:, None]) * width + px[:, None]
    src = ((pb[:, None] * (n_channels + 1) + channels) * size + points[:, 1:2]) * size
    src = src + points[:, 2:3]
    out = images.clone(memory_format=torch.contiguous_format)
    out.view(-1).index_copy_(0, dest.flatten(), canvas.reshape(-1).index_select(0, src.flatten()))
    masks = torch.zeros(batch, 1, height, width, dtype=dtype, device=device)
    masks.view(-1).index_fill_(0, (pb * height + py) * width + px, 1.0)
    return out, masks
