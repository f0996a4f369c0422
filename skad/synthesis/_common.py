"""Helpers shared by the synthesis modules: argument checks, random draws, warps.

Randomness always comes from an explicit :class:`torch.Generator`; draws are
made on the generator's device and moved to the device of the work.
"""

import math
from numbers import Integral, Real

import torch
import torch.nn.functional as nnf
from torch import Tensor

# ITU-R 601 luma, the weights of torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


def check_generator(generator, device):
    """Return ``generator`` or, for None, a fresh one on ``device``.

    The fresh generator is seeded from torch's global generator, so that
    :func:`torch.manual_seed` still makes calls without a generator
    reproducible (same convention as :func:`skad.synthesis.cutmix`).
    """
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(torch.randint(2**62, (1,))))
    elif not isinstance(generator, torch.Generator):
        raise TypeError(
            f"The 'generator' parameter must be a torch.Generator or None. "
            f"Got {type(generator).__name__} instead."
        )
    return generator


def rand(generator, *shape, device, dtype=torch.float32):
    """Uniform [0, 1) draws made on the generator's device, moved to ``device``.

    Drawing on the generator's device lets a CPU generator drive CUDA work
    (and vice versa) with results that do not depend on where they are used.
    """
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def randn(generator, *shape, device, dtype=torch.float32):
    """Standard normal draws made on the generator's device, moved to ``device``."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def uniform(u, low, high):
    """Map uniforms ``u`` in [0, 1) to [low, high)."""
    return low + u * (high - low)


def uniform_int(u, n):
    """Map uniforms ``u`` in [0, 1) to integers in {0, ..., n - 1}.

    ``n`` is an int or an integer tensor broadcasting with ``u`` (one bound per
    element), every bound >= 1.
    """
    # clamp: u * n can round up to n in floating point.
    return (u * n).floor().long().clamp_(max=n - 1)


def _within(x, low, high, closed):
    """Whether ``low <= x <= high``, each bound open or closed as ``closed`` says.

    Infinite bounds are not compared, so an unbounded check lets NaN through,
    as the plain ``isinstance(x, Real)`` checks it replaces did.
    """
    above = low == -math.inf or (low <= x if closed in ("both", "left") else low < x)
    below = high == math.inf or (x <= high if closed in ("both", "right") else x < high)
    return above and below


def check_pair(value, name, *, low=-math.inf, high=math.inf, closed="both"):
    """Validate a (min, max) pair of reals with low <= min <= max <= high.

    ``closed`` is which bounds the pair may reach, as in scikit-learn's
    ``Interval``: "both", "left" (low only), "right" (high only) or "neither".
    """
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in value)
        and value[0] <= value[1]
        and all(_within(v, low, high, closed) for v in value)
    )
    if not ok:
        lo = "<=" if closed in ("both", "left") else "<"
        hi = "<=" if closed in ("both", "right") else "<"
        raise ValueError(
            f"The '{name}' parameter must be a (min, max) pair with {low} {lo} min <= max "
            f"{hi} {high}. Got {value!r} instead."
        )
    return float(value[0]), float(value[1])


def check_real(value, name, *, low=-math.inf, high=math.inf, closed="both", allow_none=False):
    """Validate a real number within [low, high] (``closed`` as in :func:`check_pair`)."""
    if allow_none and value is None:
        return None
    if not (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and _within(value, low, high, closed)
    ):
        bound = ""
        if low != -math.inf or high != math.inf:
            left = "[" if closed in ("both", "left") else "("
            right = "]" if closed in ("both", "right") else ")"
            bound = f" in {left}{low}, {high}{right}"
        none = " or None" if allow_none else ""
        raise ValueError(
            f"The '{name}' parameter must be a real number{bound}{none}. Got {value!r} instead."
        )
    return float(value)


def check_int(value, name, *, low, high=None):
    """Validate an integer in [low, high]."""
    ok = isinstance(value, Integral) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"The '{name}' parameter must be an int {bound}. Got {value!r} instead.")
    return int(value)


def check_shape(shape, ndim, name="shape"):
    """Validate a tuple of ``ndim`` positive ints."""
    ok = (
        isinstance(shape, (tuple, list, torch.Size))
        and len(shape) == ndim
        and all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in shape)
    )
    if not ok:
        raise ValueError(
            f"The '{name}' parameter must be a tuple of {ndim} positive ints. "
            f"Got {shape!r} instead."
        )
    return tuple(int(s) for s in shape)


def choose_ops(generator, batch, n_ops, n_chosen, *, device):
    """Draw ``n_chosen`` distinct augmentations of ``n_ops`` per image, with their parameters.

    Returns ``chosen`` (B, n_ops) bool and ``params`` (B, n_ops, 2) float64
    uniforms. The draws have a fixed size whatever is chosen, so that a
    generator state always gives the same augmentations and parameters.
    """
    op_rank = rand(generator, batch, n_ops, device=device)
    params = rand(generator, batch, n_ops, 2, device=device, dtype=torch.float64)
    chosen = torch.zeros(batch, n_ops, dtype=torch.bool, device=device)
    if n_chosen > 0:
        # The ops of smallest rank: n_chosen distinct ones, uniformly drawn.
        chosen.scatter_(1, op_rank.argsort(dim=1)[:, :n_chosen], True)
    return chosen, params


def describe(value):
    """Shape and dtype of a tensor, else the type of ``value``, for error messages."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value) if value is None else f"a {type(value).__name__}"


def check_images(images, name="images", *, gray_or_rgb=True):
    """Validate a floating-point (B, C, H, W) tensor, with C in {1, 3} if ``gray_or_rgb``."""
    if not (isinstance(images, Tensor) and images.ndim == 4 and images.is_floating_point()):
        raise ValueError(
            f"The '{name}' parameter must be a floating-point tensor of shape (B, C, H, W). "
            f"Got {describe(images)} instead."
        )
    if gray_or_rgb and images.shape[1] not in (1, 3):
        raise ValueError(
            f"The '{name}' parameter must have 1 (grayscale) or 3 (RGB) channels. "
            f"Got {images.shape[1]} channels instead."
        )


def affine_warp(images, linear, *, padding_mode):
    """Bilinearly warp (B, C, H, W) images by per-image linear maps (B, 2, 2) about the centre.

    ``linear`` maps output pixel offsets from the image centre to input
    offsets (x first, then y), in pixels: it is conjugated by the image
    half-sizes so that a rotation stays a rotation on non-square images
    (in the normalised coordinates of ``grid_sample`` it would shear).
    """
    batch, _, height, width = images.shape
    device, dtype = images.device, images.dtype
    linear = linear.to(device=device, dtype=dtype)
    # Normalised pixel-centre coordinates (align_corners=False convention).
    xs = torch.arange(width, device=device, dtype=dtype).mul_(2 / width).add_(1 / width - 1)
    ys = torch.arange(height, device=device, dtype=dtype).mul_(2 / height).add_(1 / height - 1)
    aspect = height / width
    t00, t01 = linear[:, 0, 0, None, None], linear[:, 0, 1, None, None] * aspect
    t10, t11 = linear[:, 1, 0, None, None] / aspect, linear[:, 1, 1, None, None]
    xs, ys = xs[None, None, :], ys[None, :, None]
    # Built by broadcasting rather than with affine_grid, whose CPU kernel is
    # a batched matmul with an inner size of 3 and costs more than the warp.
    grid = torch.empty(batch, height, width, 2, device=device, dtype=dtype)
    torch.add(t00 * xs, t01 * ys, out=grid[..., 0])
    torch.add(t10 * xs, t11 * ys, out=grid[..., 1])
    return nnf.grid_sample(
        images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )


def rotation(degrees):
    """2x2 rotation matrices (B, 2, 2) for angles in degrees (B,)."""
    rad = torch.deg2rad(degrees)
    cos, sin = rad.cos(), rad.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def reflect(index, size):
    """Reflect integer coordinates into [0, size - 1] (mirror without edge repeat)."""
    period = (2 * (size - 1)).clamp(min=1)
    index = index.abs().remainder(period)
    return torch.where(index >= size, period - index, index)
