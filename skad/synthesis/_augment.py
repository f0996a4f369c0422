"""Anomaly-source textures and the 10 augmentations of DRAEM's imgaug pool.

Used by :class:`skad.synthesis.PerlinAnomalySynthesizer`. Only the pixels
under the mask ever reach the output, so the source is evaluated at those
points only (typically a few percent of the image) instead of as whole
augmented images:

- crop, flips and the ±45° rotation op are a per-image affine map from
  output pixels to texture coordinates, sampled bilinearly (reflection at
  the texture border) straight from the cached 8-bit textures;
- sharpening is a blend of the texture with its 3x3-smoothed copy (both
  cached), and both are linear, so it commutes with the sampling;
- gamma, brightness, solarize, posterize, invert, autocontrast and
  equalize are per-channel functions of the 8-bit value: they are composed
  into one 256-entry table per image and channel on (B, 3, 256) tensors,
  autocontrast and equalize reading the histogram of the texture pushed
  through the table so far;
- the hue/saturation shift is a per-image 3x3 colour matrix.
"""

import math

import torch
from torch import Tensor

from ._common import uniform, uniform_int
from ._textures import resize_cover, stack_resized

_OPS = (
    "gamma",
    "brightness",
    "sharpness",
    "hue_saturation",
    "solarize",
    "posterize",
    "invert",
    "autocontrast",
    "equalize",
    "rotate",
)
N_OPS = len(_OPS)
OP_INDEX = {name: k for k, name in enumerate(_OPS)}


def _as_4d(values):
    return values[:, None, None, None]


def _quantize(x):
    """Float [0, 1] -> uint8 levels (round to nearest)."""
    return x.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


def smooth3x3(x):
    """torchvision's sharpness "degenerate" image: 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13.

    Border pixels are kept, as in torchvision. Written with shifted slices
    (separable box sum) because the grouped 3x3 convolution is an order of
    magnitude slower on CPU for these shapes.
    """
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return out


def level_histograms(levels):
    """Per-image, per-channel 256-bin histograms (n, C, 256) float64 of uint8 images."""
    n, c = levels.shape[:2]
    offsets = torch.arange(n * c, device=levels.device)[:, None] * 256
    flat = (levels.reshape(n * c, -1).long() + offsets).flatten()
    return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256).double()


def hue_saturation_matrices(angle, saturation):
    """Per-image 3x3 RGB matrices (B, 3, 3) rotating hue and scaling saturation.

    In YIQ space hue is the angle and saturation the radius of the (I, Q)
    chroma vector, so a hue shift plus saturation change is one linear map
    per image: far cheaper than an HSV round trip.
    """
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=torch.float64,
    )
    from_yiq = torch.linalg.inv(to_yiq)
    to_yiq, from_yiq = to_yiq.to(angle.device), from_yiq.to(angle.device)
    cos, sin = angle.cos() * saturation, angle.sin() * saturation
    chroma = torch.zeros(angle.shape[0], 3, 3, dtype=torch.float64, device=angle.device)
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2] = cos, -sin
    chroma[:, 2, 1], chroma[:, 2, 2] = sin, cos
    return from_yiq @ chroma @ to_yiq


# Table ops: tables t (n, 3, 256) float64 in [0, 1] (the current value of
# each 8-bit source level), uniforms u (n, 2) float64, source histograms h
# (n, 3, 256) (read by autocontrast and equalize only) -> new tables.
def _tab_gamma(t, u, h):
    return t.pow(uniform(u[:, 0], 0.5, 2.0)[:, None, None])


def _tab_brightness(t, u, h):
    # ×[0.8, 1.2] then +[-30, 30] grey levels, as imgaug's
    # MultiplyAndAddToBrightness, but on every channel rather than on the
    # luminance only (which is what makes it a per-channel table).
    mul = uniform(u[:, 0], 0.8, 1.2)[:, None, None]
    add = uniform(u[:, 1], -30.0, 30.0)[:, None, None] / 255.0
    return (t * mul + add).clamp_(0.0, 1.0)


def _tab_solarize(t, u, h):
    threshold = uniform(u[:, 0], 32.0, 128.0)[:, None, None] / 255.0
    return torch.where(t >= threshold, 1.0 - t, t)


def _tab_posterize(t, u, h):
    # Keep 1-7 bits of the 8-bit value (8 would be the identity), as PIL.
    step = (2.0 ** (8 - (uniform_int(u[:, 0], 7) + 1)))[:, None, None].to(t.dtype)
    return ((t * 255.0).round_() / step).floor_().mul_(step).div_(255.0)


def _tab_invert(t, u, h):
    return 1.0 - t


def _tab_autocontrast(t, u, h):
    # torchvision's autocontrast: per-channel min-max stretch over the
    # values present in the image (levels with a non-zero count).
    present = h > 0
    low = torch.where(present, t, math.inf).amin(-1, keepdim=True)
    high = torch.where(present, t, -math.inf).amax(-1, keepdim=True)
    span = high - low
    stretched = ((t - low) / span.clamp(min=1e-12)).clamp_(0.0, 1.0)
    return torch.where(span > 0, stretched, t)


def _tab_equalize(t, u, h):
    # torchvision's (= PIL's) equalisation, computed from the histogram of
    # the current 8-bit values: the source histogram scattered through t.
    levels = (t * 255.0).round_().clamp_(0, 255).long()
    hist = torch.zeros_like(h).scatter_add_(2, levels, h)
    last = 255 - (hist.flip(-1) > 0).to(torch.uint8).argmax(-1, keepdim=True)
    step = ((hist.sum(-1, keepdim=True) - hist.gather(2, last)) / 255.0).floor_()
    cum = hist.cumsum(-1)[..., :-1]
    lut = ((cum + (step / 2).floor()) / step.clamp(min=1.0)).floor_().clamp_(0.0, 255.0)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=-1)
    return torch.where(step > 0, lut.gather(2, levels) / 255.0, t)


# Application order of the table ops (fixed; see the Notes of
# PerlinAnomalySynthesizer).
TABLE_OPS = (
    (OP_INDEX["gamma"], _tab_gamma),
    (OP_INDEX["brightness"], _tab_brightness),
    (OP_INDEX["solarize"], _tab_solarize),
    (OP_INDEX["posterize"], _tab_posterize),
    (OP_INDEX["invert"], _tab_invert),
    (OP_INDEX["autocontrast"], _tab_autocontrast),
    (OP_INDEX["equalize"], _tab_equalize),
)


class TextureCache:
    """Textures resized for one image size and device, flattened for gathers.

    For every scale s the N textures are resized to cover s * (H, W) and
    stored as uint8 together with their 3x3-smoothed copy (for sharpening)
    and their histograms; all levels are concatenated into one flat buffer so
    that a single gather serves images drawn from different levels.
    """

    def __init__(self, native, scales, height, width, device):
        buffers, smooth, hists, sizes, bases = [], [], [], [], []
        offset = 0
        for scale in scales:
            size = (math.ceil(scale * height), math.ceil(scale * width))
            if isinstance(native, Tensor):
                level = _quantize(resize_cover(native, size).clamp(0.0, 1.0))
            else:
                level = stack_resized(native, size, as_float=False)
            buffers.append(level.flatten())
            smooth.append(_quantize(smooth3x3(level.float().div_(255.0))).flatten())
            hists.append(level_histograms(level))
            sizes.append(size)
            bases.append(offset)
            offset += level.numel()
        self.n_textures = len(native)
        self.buffer = torch.cat(buffers).to(device)
        self.smooth = torch.cat(smooth).to(device)
        self.hists = torch.stack(hists).to(device)  # (n_levels, N, 3, 256)
        self.sizes = torch.tensor(sizes, dtype=torch.long, device=device)
        self.bases = torch.tensor(bases, dtype=torch.long, device=device)
