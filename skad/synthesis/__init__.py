"""Pseudo-anomaly synthesis on batches of image tensors.

Every function takes an explicit :class:`torch.Generator` and runs on the
device of its inputs.
"""

from ._textures import load_builtin_textures
from .copy_paste import copy_paste
from .cutmix import cutmix
from .perlin import PerlinAnomalySynthesizer, perlin_mask, perlin_noise

__all__ = [
    "PerlinAnomalySynthesizer",
    "copy_paste",
    "cutmix",
    "load_builtin_textures",
    "perlin_mask",
    "perlin_noise",
]
