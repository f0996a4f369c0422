"""Pseudo-anomaly synthesis on batches of image tensors.

Every function takes an explicit :class:`torch.Generator` and runs on the
device of its inputs.
"""

from .cutmix import cutmix

__all__ = [
    "cutmix",
]
