"""Anomaly-source textures: the built-in set and user folders of images."""

import functools
import os
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from .._io import IMAGE_EXTENSIONS, read_image, to_uint8

__all__ = ["load_builtin_textures"]

# Images shipped inside the scikit-image wheel (``skimage/data/*.png|jpg``):
# loading them never triggers a pooch download, unlike ``skimage.data.lily``,
# ``kidney`` or ``skin``. The first three are textures proper (the closest we
# have to DTD offline); the others are natural photographs whose crops are
# structured, colourful anomaly sources. Mostly-flat images (``text``,
# ``page``, the nearly black ``hubble_deep_field``) are left out because a
# flat source produces an anomaly indistinguishable from a brightness shift.
_BUILTIN_NAMES = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "astronaut",
    "immunohistochemistry",
)

def _to_rgb_uint8(array):
    """(H, W) or (H, W, C) uint8 numpy array -> (3, H, W) uint8 tensor."""
    tensor = torch.from_numpy(array.copy())
    if tensor.ndim == 2:
        tensor = tensor[..., None]
    tensor = tensor[..., :3].permute(2, 0, 1)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor.contiguous()


@functools.lru_cache(maxsize=1)
def builtin_sources():
    """The built-in images at native resolution, as (3, h, w) uint8 tensors.

    Cached: decoding the PNG/JPEG files costs a few hundred milliseconds and
    the tensors are never modified (every consumer resizes into new memory).
    """
    # Imported lazily: scikit-image is only needed for the built-in set.
    import skimage.data

    return tuple(_to_rgb_uint8(getattr(skimage.data, name)()) for name in _BUILTIN_NAMES)


def resize_cover(image, size):
    """Resize (C, h, w) to cover ``size`` = (H, W) keeping its aspect, then centre-crop.

    Keeping the aspect ratio avoids stretching a texture's structure in one
    direction, which would make the anomalies anisotropic for no reason.
    """
    height, width = size
    h, w = image.shape[-2:]
    factor = max(height / h, width / w)
    new_h = max(height, round(h * factor))
    new_w = max(width, round(w * factor))
    image = F.resize(image, [new_h, new_w], antialias=True)
    return F.center_crop(image, [height, width])


def stack_resized(sources, size, *, device=None, as_float=True):
    """Resize every (3, h, w) uint8 source to ``size`` and stack them.

    Returns float32 in [0, 1] when ``as_float``, else uint8 (resizing is done
    on uint8 either way: torchvision's antialiased uint8 path is exact enough
    and several times faster than float).
    """
    out = torch.stack([resize_cover(src, size) for src in sources]).to(device)
    if not as_float:
        return out
    return out.to(torch.float32).div_(255.0)


def load_builtin_textures(size=256):
    """Load the built-in anomaly-source textures.

    Ten images bundled with scikit-image, available offline: the ``brick``,
    ``grass`` and ``gravel`` textures, and crops of the ``moon``,
    ``camera``, ``coffee``, ``chelsea``, ``rocket``, ``astronaut`` and
    ``immunohistochemistry`` photographs. They replace the Describable
    Textures Dataset that DRAEM-style methods use, which cannot be shipped.

    Parameters
    ----------
    size : int or tuple of (int, int), default=256
        Output height and width (an int gives square textures). Each image is
        resized, keeping its aspect ratio, to cover the size and then
        centre-cropped.

    Returns
    -------
    textures : torch.Tensor of shape (10, 3, H, W)
        Float32 RGB textures in [0, 1] on the CPU; grayscale images are
        replicated to three channels.

    Examples
    --------
    >>> from skad.synthesis import load_builtin_textures
    >>> load_builtin_textures(64).shape
    torch.Size([10, 3, 64, 64])
    """
    size = _check_size(size)
    return stack_resized(builtin_sources(), size)


def _check_size(size):
    """Validate an int or (int, int) size into an (H, W) tuple."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    )
    if not ok:
        raise ValueError(
            f"The 'size' parameter must be a positive int or a pair of positive ints. "
            f"Got {size!r} instead."
        )
    return int(size[0]), int(size[1])


def load_texture_folder(path):
    """Load every image file directly in folder ``path`` as (3, h, w) uint8 tensors."""
    folder = Path(os.fspath(path))
    if not folder.is_dir():
        raise FileNotFoundError(f"The anomaly-source folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    # skad's one reader: 16-bit and float textures are rescaled, not clipped
    images = [_to_rgb_uint8(to_uint8(read_image(file, mode="RGB"))) for file in files]
    if not images:
        raise ValueError(
            f"The anomaly-source folder {str(folder)!r} holds no image files "
            f"(looked for suffixes {list(IMAGE_EXTENSIONS)})."
        )
    return tuple(images)
