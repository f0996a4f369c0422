"""Perlin-noise pseudo-anomalies (DRAEM recipe, ``ALGORITHMS.md`` section 0.3).

Everything is vectorised over the batch and runs on the device of the inputs;
randomness comes from an explicit :class:`torch.Generator`.
"""

import math
import os
from numbers import Integral, Real

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ._augment import N_OPS, OP_INDEX, TABLE_OPS, TextureCache, hue_saturation_matrices
from ._common import (
    LUMA,
    affine_warp,
    check_generator,
    check_images,
    check_int,
    check_pair,
    check_real,
    check_shape,
    choose_ops,
    rand,
    reflect,
    rotation,
    uniform,
    uniform_int,
)
from ._textures import builtin_sources, load_texture_folder

__all__ = ["perlin_noise", "perlin_mask", "PerlinAnomalySynthesizer"]

# Amplitude of single-octave 2-D Perlin noise with unit gradients is at most
# sqrt(2) / 2; scaling by sqrt(2) maps it to [-1, 1] as DRAEM does, so that
# its threshold of 0.5 keeps the same meaning.
_AMPLITUDE = math.sqrt(2.0)

# Retries of perlin_mask for masks that came out empty, before the blob
# fallback. At threshold 0.5 about 10% of masks are empty, so two or three
# rounds nearly always suffice; the bound only matters for extreme thresholds.
_MAX_RETRIES = 10


# --------------------------------------------------------------------------- #
# Perlin noise and masks.
# --------------------------------------------------------------------------- #
def _fade(t):
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (zero first/second derivative at 0, 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _axis_weights(n, res, n_nodes, device):
    """Interpolation weights of one image axis against its lattice nodes.

    For pixel p of an axis of length n and lattice resolution r (per image),
    the lattice coordinate is t = p * r / n, between nodes i = floor(t) and
    i + 1 at fractional offset f. Returns two (B, n, n_nodes) matrices:
    ``weight[p, j]`` the fade weight of node j (1 - fade(f) for i, fade(f)
    for i + 1, 0 elsewhere) and ``offset_weight[p, j]`` that weight times the
    signed distance from node j (f for i, f - 1 for i + 1).
    """
    pos = torch.arange(n, device=device, dtype=torch.float32)
    # p * r is an exact integer in float32, so t is exact whenever p * r / n
    # is an integer: noise at lattice pixels is then exactly 0.
    t = pos[None, :] * res[:, None].float() / n
    cell = t.floor().long().clamp_(max=n_nodes - 2)
    frac = t - cell
    fade = _fade(frac)
    weight = torch.zeros(res.shape[0], n, n_nodes, device=device)
    offset_weight = torch.zeros_like(weight)
    left, right = cell[..., None], cell[..., None] + 1
    weight.scatter_(2, left, (1.0 - fade)[..., None])
    weight.scatter_(2, right, fade[..., None])
    offset_weight.scatter_(2, left, ((1.0 - fade) * frac)[..., None])
    offset_weight.scatter_(2, right, (fade * (frac - 1.0))[..., None])
    return weight, offset_weight


def _device_and_generator(device, generator):
    """The output device (default: the generator's, else CPU) and a checked generator."""
    if device is None:
        device = generator.device if isinstance(generator, torch.Generator) else "cpu"
    device = torch.device(device)
    return device, check_generator(generator, device)


def _check_mask_args(threshold, max_scale, rotate, rotate_name):
    """Validated mask arguments, with a (0, 0) rotation range as None (no rotation)."""
    threshold = check_real(threshold, "threshold")
    max_scale = check_int(max_scale, "max_scale", low=0, high=16)
    if rotate is not None:
        rotate = check_pair(rotate, rotate_name)
        rotate = None if rotate == (0.0, 0.0) else rotate
    return threshold, max_scale, rotate


def _check_scale(scale, batch, max_scale, generator, device):
    """Per-image lattice exponents (B, 2) long: given, or drawn from U{0..max_scale}."""
    if scale is None:
        u = rand(generator, batch, 2, device=device, dtype=torch.float64)
        return uniform_int(u, max_scale + 1)
    if isinstance(scale, Tensor):
        if scale.shape != (batch, 2) or scale.is_floating_point() or (scale < 0).any():
            raise ValueError(
                f"A tensor 'scale' must hold non-negative integer exponents of shape "
                f"({batch}, 2). Got shape {tuple(scale.shape)} and dtype {scale.dtype}."
            )
        return scale.to(device=device, dtype=torch.long)
    if isinstance(scale, Integral) and not isinstance(scale, bool):
        scale = (scale, scale)
    if not (
        isinstance(scale, (tuple, list))
        and len(scale) == 2
        and all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in scale)
    ):
        raise ValueError(
            "The 'scale' parameter must be None, a non-negative int, a pair of them or a "
            f"(B, 2) integer tensor. Got {scale!r} instead."
        )
    return torch.tensor(scale, device=device, dtype=torch.long).expand(batch, 2)


def perlin_noise(shape, *, scale=None, max_scale=5, generator=None, device=None):
    """Single-octave 2-D Perlin noise, one independent field per image.

    Each field lives on a lattice of (2^a, 2^b) cells (rows, columns) spanning
    the image; every lattice node carries a unit gradient of uniformly random
    angle, and the noise is the quintic-fade interpolation of the node
    gradients' dot products with the offsets to the nodes, as in DRAEM [1]_.

    Parameters
    ----------
    shape : tuple of (int, int, int)
        Output shape (B, H, W).
    scale : int, tuple of (int, int), torch.Tensor of shape (B, 2) or None, \
            default=None
        Lattice exponents (a, b): the lattice has 2^a rows and 2^b columns of
        cells. An int uses it for both axes; a tensor gives per-image
        exponents. None draws a and b independently per image from
        U{0, ..., max_scale}.
    max_scale : int, default=5
        Largest exponent drawn when ``scale`` is None.
    generator : torch.Generator, default=None
        Source of randomness; draws happen on its device. None creates a fresh
        generator seeded from torch's global generator.
    device : torch.device or str, default=None
        Device of the output. None uses the generator's device (CPU without
        a generator).

    Returns
    -------
    noise : torch.Tensor of shape (B, H, W)
        Float32 noise in [-1, 1] (scaled by sqrt(2) from the raw Perlin
        range). It is exactly 0 at lattice nodes, i.e. at pixels (y, x) with
        y * 2^a / H and x * 2^b / W both integers.

    See Also
    --------
    perlin_mask : Thresholded, rotated Perlin noise.

    References
    ----------
    .. [1] V. Zavrtanik, M. Kristan and D. Skočaj, "DRAEM - A discriminatively
       trained reconstruction embedding for surface anomaly detection",
       ICCV 2021.

    Examples
    --------
    >>> import torch
    >>> from skad.synthesis import perlin_noise
    >>> noise = perlin_noise((2, 32, 32), scale=2, generator=torch.Generator().manual_seed(0))
    >>> noise.shape, float(noise[0, 8, 16])
    (torch.Size([2, 32, 32]), 0.0)
    """
    batch, height, width = check_shape(shape, 3)
    max_scale = check_int(max_scale, "max_scale", low=0, high=16)
    device, generator = _device_and_generator(device, generator)

    exponents = _check_scale(scale, batch, max_scale, generator, device)
    res = 2**exponents
    # A common node count lets all images share one batched matmul; images
    # with coarser lattices simply never weight the extra nodes.
    n_nodes = int(res.max()) + 1
    angles = rand(generator, batch, n_nodes, n_nodes, device=device) * (2 * math.pi)
    grad_x, grad_y = angles.cos(), angles.sin()

    # noise[y, x] = sum_{j,i} wy_j(y) wx_i(x) (gx[j,i] dx_i(x) + gy[j,i] dy_j(y)),
    # which factorises into two chains of small matrix products: O(H W L)
    # work with no gathers, L = number of lattice nodes per axis (<= 33).
    wy, ay = _axis_weights(height, res[:, 0], n_nodes, device)
    wx, ax = _axis_weights(width, res[:, 1], n_nodes, device)
    # One (B, H, 2L) @ (B, 2L, W) product for both terms.
    left = torch.cat([wy @ grad_x, ay @ grad_y], dim=2)
    right = torch.cat([ax, wx], dim=2).transpose(1, 2)
    return torch.bmm(left, right).mul_(_AMPLITUDE)


def _blob_masks(batch, height, width, generator, device):
    """Random small ellipses (B, H, W) bool, each containing at least its centre pixel."""
    u = rand(generator, batch, 4, device=device)
    # Centres on pixel centres and a radius >= 0.5 px guarantee a non-empty
    # mask; the radii span 5-15% of each side, a typical small defect.
    cy = uniform_int(uniform(u[:, 0], 0.2, 0.8), height).float() + 0.5
    cx = uniform_int(uniform(u[:, 1], 0.2, 0.8), width).float() + 0.5
    ry = (uniform(u[:, 2], 0.05, 0.15) * height).clamp_(min=0.5)
    rx = (uniform(u[:, 3], 0.05, 0.15) * width).clamp_(min=0.5)
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    dy = ((ys[None, :] - cy[:, None]) / ry[:, None]) ** 2
    dx = ((xs[None, :] - cx[:, None]) / rx[:, None]) ** 2
    return dy[:, :, None] + dx[:, None, :] <= 1.0


def _mask_subsampling(height, width, max_scale):
    """Power-of-two factor by which the mask noise can be computed at lower resolution.

    The noise is smooth at the scale of its finest lattice cell, so it is
    evaluated (and rotated) on a grid keeping at least 4 pixels per finest
    cell and bilinearly upsampled: for 256-pixel images and ``max_scale=5``
    that is a quarter of the pixels, at a sub-pixel change of the blob edges.
    """
    factor = 1
    while min(height, width) / (2 * factor) >= 4 * 2**max_scale:
        factor *= 2
    return factor


def _raw_perlin_masks(batch, height, width, threshold, max_scale, rotate, generator, device):
    """One round of thresholded (optionally rotated) Perlin masks, (B, H, W) bool."""
    factor = _mask_subsampling(height, width, max_scale)
    low_h, low_w = math.ceil(height / factor), math.ceil(width / factor)
    noise = perlin_noise(
        (batch, low_h, low_w), max_scale=max_scale, generator=generator, device=device
    )[:, None]
    if rotate is not None:
        degrees = uniform(rand(generator, batch, device=device), *rotate)
        # Zero padding: the corners uncovered by the rotation get noise 0,
        # below any sensible threshold, as imgaug's constant-0 fill in DRAEM.
        noise = affine_warp(noise, rotation(degrees), padding_mode="zeros")
    if factor > 1:
        noise = nnf.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    return noise[:, 0] > threshold


def perlin_mask(
    shape, *, threshold=0.5, max_scale=5, rotate=(-90, 90), generator=None, device=None
):
    """Binary anomaly masks from thresholded, rotated Perlin noise (DRAEM recipe).

    Draws :func:`perlin_noise` with lattice exponents from U{0..max_scale},
    rotates each field by an angle from U(rotate) degrees (bilinear, zero
    fill) and keeps the pixels whose noise exceeds ``threshold``.

    For speed the noise is computed and rotated on a grid subsampled by a
    power of two that keeps at least 4 pixels per finest lattice cell (2 for
    256-pixel images and ``max_scale=5``), then bilinearly upsampled before
    thresholding; the noise is smooth at that scale, so this only moves blob
    edges by a fraction of a pixel.

    Parameters
    ----------
    shape : tuple of (int, int, int)
        Mask batch shape (B, H, W).
    threshold : float, default=0.5
        Noise level above which a pixel is anomalous. The noise is in
        [-1, 1]; higher thresholds give smaller, rarer blobs.
    max_scale : int, default=5
        Largest lattice exponent; higher values allow finer blobs.
    rotate : tuple of (float, float) or None, default=(-90, 90)
        Range of the rotation angle in degrees. None disables the rotation.
    generator : torch.Generator, default=None
        Source of randomness; draws happen on its device. None creates a fresh
        generator seeded from torch's global generator.
    device : torch.device or str, default=None
        Device of the output. None uses the generator's device (CPU without
        a generator).

    Returns
    -------
    masks : torch.Tensor of shape (B, 1, H, W)
        Float32 masks with values in {0, 1}; every mask holds at least one
        pixel.

    Notes
    -----
    DRAEM lets a mask come out empty (about 10% of draws at threshold 0.5)
    and then trains on an "anomalous" image without an anomaly. Here empty
    masks are redrawn: only the empty ones, for at most 10 rounds, after
    which any mask still empty (only plausible for thresholds near or above
    1) is replaced by a random ellipse with radii 5-15% of the image sides.
    The redraws make the mask distribution differ from DRAEM's by
    conditioning on non-emptiness.

    Examples
    --------
    >>> import torch
    >>> from skad.synthesis import perlin_mask
    >>> masks = perlin_mask((4, 64, 64), generator=torch.Generator().manual_seed(0))
    >>> masks.shape, bool((masks.flatten(1).sum(1) > 0).all())
    (torch.Size([4, 1, 64, 64]), True)
    """
    batch, height, width = check_shape(shape, 3)
    threshold, max_scale, rotate = _check_mask_args(threshold, max_scale, rotate, "rotate")
    device, generator = _device_and_generator(device, generator)
    masks = _perlin_mask_bool(batch, height, width, threshold, max_scale, rotate, generator, device)
    return masks[:, None].float()


def _perlin_mask_bool(batch, height, width, threshold, max_scale, rotate, generator, device):
    """Validated-argument core of :func:`perlin_mask`: (B, H, W) bool masks."""
    args = (threshold, max_scale, rotate, generator, device)
    masks = _raw_perlin_masks(batch, height, width, *args)
    empty = ~masks.flatten(1).any(1)
    for _ in range(_MAX_RETRIES):
        if not empty.any():
            break
        # Redraw only the empty masks: the others are already valid samples.
        idx = empty.nonzero()[:, 0]
        redraw = _raw_perlin_masks(idx.numel(), height, width, *args)
        masks[idx] = redraw
        empty[idx] = ~redraw.flatten(1).any(1)
    if empty.any():
        idx = empty.nonzero()[:, 0]
        masks[idx] = _blob_masks(idx.numel(), height, width, generator, device)
    return masks


# --------------------------------------------------------------------------- #
# The synthesiser (anomaly sources and augmentations: see _augment.py).
# --------------------------------------------------------------------------- #
class PerlinAnomalySynthesizer:
    """Synthesise DRAEM-style Perlin-mask anomalies on batches of images.

    For each image I a binary mask M is drawn with :func:`perlin_mask`, an
    anomaly source A is cut from a random texture and augmented, and the two
    are blended inside the mask [1]_::

        I' = I * (1 - M) + (1 - beta) * A * M + beta * I * M,  beta ~ U(beta)

    Parameters
    ----------
    sources : torch.Tensor of shape (N, C, h, w), str, os.PathLike or None, \
            default=None
        Anomaly-source textures. A tensor holds N textures with C in {1, 3}
        (floating point in [0, 1], or uint8). A path names a folder whose
        image files (png, jpg, jpeg, bmp, tif, tiff, webp) are loaded once, on
        first use, with PIL. None uses the textures of
        :func:`load_builtin_textures`.
    beta : tuple of (float, float), default=(0.0, 0.8)
        Range of the blending factor beta, the weight the original image
        keeps inside the mask; within [0, 1]. With an upper bound below 1
        every masked pixel moves towards the texture.
    n_augmentations : int, default=3
        Number of distinct augmentations drawn per image, in [0, 10], from:
        gamma contrast (gamma in [0.5, 2]), brightness (×[0.8, 1.2] and
        +[-30, 30]/255), sharpening (factor in [1.5, 3]), hue (±70°) and
        saturation (×[0.6, 1.4]) shift, solarize (threshold in
        [32, 128]/255), posterize (1-7 bits), invert, autocontrast, equalize
        and rotation by U(-45°, 45°).
    rotate_prob : float, default=0.0
        Probability of rotating each base image by U(-90°, 90°) (bilinear,
        reflection padding) before the anomaly is added. ADL uses 0.3, DAF 0.
        Rotated images are returned rotated.
    threshold : float, default=0.5
        Perlin noise threshold, see :func:`perlin_mask`.
    max_scale : int, default=5
        Largest Perlin lattice exponent, see :func:`perlin_mask`.
    mask_rotate : tuple of (float, float) or None, default=(-90, 90)
        Range of the Perlin noise rotation in degrees, see :func:`perlin_mask`.
    texture_scales : tuple of float, default=(1.0, 1.5, 2.0)
        Magnifications (>= 1) of the textures: each texture is resized once
        per image size to cover ``scale * (H, W)`` for every scale, and each
        image draws its source from an (H, W) window at a random place of a
        random texture at a random scale.

    Attributes
    ----------
    n_sources_ : int
        Number of anomaly-source textures; available after the first call.

    See Also
    --------
    perlin_mask : The masks used here.
    load_builtin_textures : The default anomaly sources.
    skad.synthesis.copy_paste : Pseudo-anomalies cut from labelled anomalies.

    Notes
    -----
    Apply the synthesiser to images in [0, 1], *before* any mean/std
    normalisation: the augmentations and the blend assume that range. Pixels
    outside the masks are returned bit-for-bit (when ``rotate_prob`` is 0);
    inside, outputs are clipped to [0, 1].

    Textures are resized once per image size and device and cached as 8-bit
    images (imgaug, used by DRAEM, also works on 8 bits); the anomaly source
    is then only evaluated at the masked pixels. Differences from the
    DRAEM/imgaug implementation, for speed and determinism:

    - DRAEM resizes the whole texture to the image size; here each image
      takes a window of a randomly magnified texture, with random horizontal
      and vertical flips, which gives more variety from few textures.
    - The drawn augmentations run in a fixed order, not a random one:
      sharpening and rotation (reflection padding, where imgaug fills black
      corners that would make a give-away dark triangle), then gamma,
      brightness, solarize, posterize, invert, autocontrast and equalize
      (whose statistics are those of the whole resized texture, before
      sharpening and rotation), then hue/saturation.
    - Brightness acts on every channel, not on the luminance only; the
      hue/saturation shift is a rotation and scaling of the YIQ chroma plane
      rather than an HSV round trip.
    - For grayscale images (C = 1) the augmented source is converted to
      grayscale (ITU-R 601 luma) before blending.
    - Empty masks are redrawn (see :func:`perlin_mask`) so every output image
      holds an anomaly; DRAEM's extra 50% of anomaly-free samples is left to
      the caller.

    References
    ----------
    .. [1] V. Zavrtanik, M. Kristan and D. Skočaj, "DRAEM - A discriminatively
       trained reconstruction embedding for surface anomaly detection",
       ICCV 2021.

    Examples
    --------
    >>> import torch
    >>> from skad.synthesis import PerlinAnomalySynthesizer
    >>> synth = PerlinAnomalySynthesizer()
    >>> images = torch.rand(4, 3, 64, 64)
    >>> new_images, masks = synth(images, generator=torch.Generator().manual_seed(0))
    >>> new_images.shape, masks.shape
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]))
    """

    def __init__(
        self,
        sources=None,
        *,
        beta=(0.0, 0.8),
        n_augmentations=3,
        rotate_prob=0.0,
        threshold=0.5,
        max_scale=5,
        mask_rotate=(-90, 90),
        texture_scales=(1.0, 1.5, 2.0),
    ):
        self.sources = sources
        self.beta = beta
        self.n_augmentations = n_augmentations
        self.rotate_prob = rotate_prob
        self.threshold = threshold
        self.max_scale = max_scale
        self.mask_rotate = mask_rotate
        self.texture_scales = texture_scales
        # Validate eagerly: this is a plain callable, not a scikit-learn
        # estimator, so failing at construction is the most helpful.
        self._check_params()
        # Native-resolution sources and their per-(H, W, device) caches:
        # resizing costs far more than a synthesis call.
        self._native = None
        self._caches = {}

    def __repr__(self):
        source = "builtin" if self.sources is None else type(self.sources).__name__
        params = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("beta", "n_augmentations", "rotate_prob", "threshold")
        )
        return f"{type(self).__name__}(sources=<{source}>, {params})"

    def __getstate__(self):
        # Drop the caches when pickling (e.g. inside a fitted estimator): they
        # are large and rebuilt on demand; a folder is re-read on first use.
        state = self.__dict__.copy()
        state["_caches"] = {}
        state["_native"] = None
        return state

    def _check_params(self):
        sources = self.sources
        if isinstance(sources, Tensor):
            if sources.ndim != 4 or sources.shape[1] not in (1, 3) or sources.shape[0] < 1:
                raise ValueError(
                    "A tensor 'sources' must have shape (N, C, h, w) with N >= 1 and C in "
                    f"{{1, 3}}. Got shape {tuple(sources.shape)} instead."
                )
            if not (sources.is_floating_point() or sources.dtype == torch.uint8):
                raise ValueError(
                    f"A tensor 'sources' must be floating point or uint8. Got {sources.dtype}."
                )
        elif sources is not None and not isinstance(sources, (str, os.PathLike)):
            raise ValueError(
                "The 'sources' parameter must be a (N, C, h, w) tensor, a folder path or "
                f"None. Got {type(sources).__name__} instead."
            )
        check_pair(self.beta, "beta", low=0.0, high=1.0)
        check_int(self.n_augmentations, "n_augmentations", low=0, high=N_OPS)
        check_real(self.rotate_prob, "rotate_prob", low=0, high=1)
        _check_mask_args(self.threshold, self.max_scale, self.mask_rotate, "mask_rotate")
        scales = self.texture_scales
        if not (
            isinstance(scales, (tuple, list))
            and len(scales) >= 1
            and all(isinstance(v, Real) and not isinstance(v, bool) and v >= 1 for v in scales)
        ):
            raise ValueError(
                "The 'texture_scales' parameter must be a non-empty tuple of reals >= 1. "
                f"Got {scales!r} instead."
            )

    @property
    def n_sources_(self):
        if self._native is None:
            raise AttributeError("n_sources_ is available after the first call.")
        return len(self._native)

    def _cache(self, height, width, device):
        key = (height, width, str(device))
        if key not in self._caches:
            if self._native is None:
                if self.sources is None:
                    self._native = builtin_sources()
                elif isinstance(self.sources, Tensor):
                    src = self.sources.detach().cpu()
                    src = src.float().div(255.0) if src.dtype == torch.uint8 else src.float()
                    self._native = src.expand(-1, 3, -1, -1) if src.shape[1] == 1 else src
                else:
                    self._native = load_texture_folder(self.sources)
            self._caches[key] = TextureCache(
                self._native, self.texture_scales, height, width, device
            )
        return self._caches[key]

    def _source_values(self, point_b, point_y, point_x, batch, height, width, generator):
        """Augmented anomaly-source colours (K, 3) float32 in [0, 1] at K output pixels.

        ``point_b``, ``point_y``, ``point_x`` (K,) are the image index, row
        and column of each masked pixel.
        """
        device = point_b.device
        cache = self._cache(height, width, device)
        n_aug = self.n_augmentations

        # All draws up front, in fixed-size blocks: a generator state gives the
        # same sources whatever ops happen to be drawn.
        u = rand(generator, batch, 6, device=device, dtype=torch.float64)
        chosen, params = choose_ops(generator, batch, N_OPS, n_aug, device=device)

        # Per image: texture, scale level, window position, flips, rotation.
        texture = uniform_int(u[:, 0], cache.n_textures)
        level = uniform_int(u[:, 1], cache.sizes.shape[0])
        tex_h, tex_w = cache.sizes[level, 0], cache.sizes[level, 1]
        top = (u[:, 2] * (tex_h - height + 1)).floor().long().clamp_(max=tex_h - height)
        left = (u[:, 3] * (tex_w - width + 1)).floor().long().clamp_(max=tex_w - width)
        flip_x = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
        flip_y = torch.where(u[:, 5] < 0.5, -1.0, 1.0)
        rotate = chosen[:, OP_INDEX["rotate"]]
        theta = torch.where(rotate, uniform(params[:, OP_INDEX["rotate"], 0], -45.0, 45.0), 0.0)
        theta = torch.deg2rad(theta)
        base = cache.bases[level] + texture * 3 * tex_h * tex_w

        # Flat buffer index of each output pixel's texture sample: flip and
        # rotate about the window centre, then shift to the window. Flat
        # indices and index_select are several times faster than advanced
        # indexing on CPU.
        b = point_b
        tex_w_b = tex_w[b]
        plane = (tex_h * tex_w)[b, None]
        channel = torch.arange(3, device=device)[None, :] * plane  # (K, 3)
        cy, cx = (height - 1) / 2, (width - 1) / 2
        values = torch.empty(b.shape[0], 3, device=device)

        # Unrotated images (most of them): an integer pixel of the window.
        plain = (~rotate[b]).nonzero()[:, 0]
        if plain.numel() > 0:
            bp = b[plain]
            sy = torch.where(flip_y[bp] < 0, height - 1 - point_y[plain], point_y[plain])
            sx = torch.where(flip_x[bp] < 0, width - 1 - point_x[plain], point_x[plain])
            plain_index = (base[bp] + (top[bp] + sy) * tex_w_b[plain] + left[bp] + sx)[:, None]
            plain_index = (plain_index + channel[plain]).flatten()
            values[plain] = cache.buffer.index_select(0, plain_index).view(-1, 3).float()

        # Rotated images: bilinear between four texels, reflected at the
        # texture border (the window's surroundings are real texture).
        turned = rotate[b].nonzero()[:, 0]
        if turned.numel() > 0:
            bt = b[turned]
            dy = (point_y[turned].double() - cy) * flip_y[bt]
            dx = (point_x[turned].double() - cx) * flip_x[bt]
            cos, sin = theta.cos()[bt], theta.sin()[bt]
            sy = sin * dx + cos * dy + (top[bt] + cy)
            sx = cos * dx - sin * dy + (left[bt] + cx)
            y0, x0 = sy.floor(), sx.floor()
            wy, wx = (sy - y0).float()[:, None], (sx - x0).float()[:, None]
            y0, x0 = y0.long(), x0.long()
            th, tw = tex_h[bt], tex_w[bt]
            rows = torch.stack([reflect(y0, th), reflect(y0 + 1, th)], 1) * tw[:, None]
            cols = torch.stack([reflect(x0, tw), reflect(x0 + 1, tw)], 1)
            # (K', 2 rows, 2 columns, 3 channels) flat indices.
            turned_index = (
                base[bt, None, None, None]
                + rows[:, :, None, None]
                + cols[:, None, :, None]
                + channel[turned, None, None, :]
            ).flatten()
            taps = cache.buffer.index_select(0, turned_index).view(-1, 2, 2, 3).float()
            top_row = torch.lerp(taps[:, 0, 0], taps[:, 0, 1], wx)
            bottom_row = torch.lerp(taps[:, 1, 0], taps[:, 1, 1], wx)
            values[turned] = torch.lerp(top_row, bottom_row, wy)

        # Sharpening = lerp(smooth, texture, factor) with the cached 3x3
        # smoothed texture, sampled at the same places (both maps are linear,
        # so sharpen-then-rotate equals sampling both and blending).
        sharp = chosen[b, OP_INDEX["sharpness"]]
        if sharp.any():
            smooth = torch.empty_like(values)
            if plain.numel() > 0:
                smooth[plain] = cache.smooth.index_select(0, plain_index).view(-1, 3).float()
            if turned.numel() > 0:
                taps = cache.smooth.index_select(0, turned_index).view(-1, 2, 2, 3).float()
                top_row = torch.lerp(taps[:, 0, 0], taps[:, 0, 1], wx)
                bottom_row = torch.lerp(taps[:, 1, 0], taps[:, 1, 1], wx)
                smooth[turned] = torch.lerp(top_row, bottom_row, wy)
            sharp = sharp.nonzero()[:, 0]
            factor = uniform(params[b[sharp], OP_INDEX["sharpness"], 0], 1.5, 3.0)[:, None].float()
            values[sharp] = torch.lerp(smooth[sharp], values[sharp], factor).clamp_(0.0, 255.0)
        # Back to 8-bit levels, as imgaug's uint8 pipeline.
        values = values.round_().long()

        # Table ops, composed per image and channel, then one lookup.
        tables = torch.linspace(0.0, 1.0, 256, device=device, dtype=torch.float64)
        tables = tables.expand(batch, 3, 256).clone()
        hist = cache.hists[level, texture]
        for k, op in TABLE_OPS:
            idx = chosen[:, k].nonzero()[:, 0]
            if idx.numel() > 0:
                tables[idx] = op(tables[idx], params[idx, k], hist[idx])
        table_index = (b[:, None] * 3 + torch.arange(3, device=device)) * 256 + values
        colours = tables.float().flatten().index_select(0, table_index.flatten()).view(-1, 3)

        # Hue/saturation: one 3x3 colour matrix per image (identity if not drawn).
        k = OP_INDEX["hue_saturation"]
        hue = chosen[:, k]
        angle = torch.where(hue, uniform(params[:, k, 0], -70.0, 70.0), 0.0)
        saturation = torch.where(hue, uniform(params[:, k, 1], 0.6, 1.4), 1.0)
        # imgaug's AddToHueAndSaturation((-50, 50)) adds up to 50 of 255 hue
        # units (about ±70 degrees) and ±50 of 255 to the saturation (roughly
        # ±40% of a typical one).
        matrices = hue_saturation_matrices(torch.deg2rad(angle), saturation).float()
        shifted = hue[b].nonzero()[:, 0]
        if shifted.numel() > 0:
            colours[shifted] = torch.einsum(
                "kij,kj->ki", matrices[b[shifted]], colours[shifted]
            ).clamp_(0.0, 1.0)
        return colours

    def __call__(self, images, *, generator=None):
        """Add a Perlin-mask anomaly to every image.

        Parameters
        ----------
        images : torch.Tensor of shape (B, C, H, W)
            Floating-point images in [0, 1] with C in {1, 3}, *before*
            normalisation. Not modified.
        generator : torch.Generator, default=None
            Source of randomness; draws happen on its device. None creates a
            fresh generator seeded from torch's global generator.

        Returns
        -------
        anomalous_images : torch.Tensor of shape (B, C, H, W)
            New images, with the dtype and device of ``images``.
        masks : torch.Tensor of shape (B, 1, H, W)
            Anomaly masks with values in {0, 1} and the dtype of ``images``;
            each holds at least one pixel.
        """
        check_images(images)
        batch, n_channels, height, width = images.shape
        device = images.device
        generator = check_generator(generator, device)
        args = _check_mask_args(self.threshold, self.max_scale, self.mask_rotate, "mask_rotate")
        masks = _perlin_mask_bool(batch, height, width, *args, generator, device)
        points = masks.flatten(1).nonzero()
        point_b, pixel = points[:, 0], points[:, 1]
        point_y, point_x = pixel // width, pixel % width
        colours = self._source_values(point_b, point_y, point_x, batch, height, width, generator)
        if n_channels == 1:
            luma = torch.tensor(LUMA, device=device)
            colours = (colours @ luma)[:, None]

        u = rand(generator, batch, 3, device=device, dtype=images.dtype)
        out = images.clone(memory_format=torch.contiguous_format)
        if self.rotate_prob > 0:
            rotated = (u[:, 1] < self.rotate_prob).nonzero()[:, 0]
            if rotated.numel() > 0:
                degrees = uniform(u[rotated, 2], -90.0, 90.0)
                out[rotated] = affine_warp(
                    images[rotated], rotation(degrees), padding_mode="reflection"
                )

        # I' = I + M (1 - beta) (A - I), the blend formula, written only at
        # the masked pixels: everything else is the untouched copy. Both ends
        # lie in [0, 1]; the clip only removes rounding excursions.
        beta_lo, beta_hi = self.beta
        weight = (1.0 - uniform(u[:, 0], beta_lo, beta_hi))[point_b, None]
        channels = torch.arange(n_channels, device=device)[None, :]
        flat = (point_b[:, None] * n_channels + channels) * (height * width) + pixel[:, None]
        flat = flat.flatten()
        out_flat = out.view(-1)
        inside = out_flat.index_select(0, flat).view(-1, n_channels)
        blended = torch.lerp(inside, colours.to(images.dtype), weight).clamp_(0.0, 1.0)
        out_flat.index_copy_(0, flat, blended.flatten())
        return out, masks[:, None].to(images.dtype)
