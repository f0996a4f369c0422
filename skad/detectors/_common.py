"""What the trained and the frozen-feature detectors share: backbones, parameters, seeding."""

import contextlib
import copy
import os

import torch
from torch import nn

from ..nn.backbones import IMAGENET_MEAN, IMAGENET_STD, create_feature_extractor

__all__ = ["BACKBONE_CONSTRAINTS", "feature_extractor", "input_normalization", "seeded"]

#: ``_parameter_constraints`` of the ``backbone`` and ``pretrained`` parameters.
BACKBONE_CONSTRAINTS = {
    "backbone": [str, nn.Module],
    "pretrained": ["boolean", str, os.PathLike],
}


@contextlib.contextmanager
def seeded(seed, device):
    """Seed torch's global generators (CPU, and ``device``'s if CUDA) for a block, then restore."""
    cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def feature_extractor(backbone, pretrained, out_indices):
    """``backbone`` as a :class:`~skad.nn.backbones.FeatureExtractor`; a module is copied first,
    so that a fit never trains (or moves) the caller's module."""
    if isinstance(backbone, nn.Module):
        backbone = copy.deepcopy(backbone)
    return create_feature_extractor(backbone, pretrained=pretrained, out_indices=out_indices)


def input_normalization(extractor):
    """``(mean, std)``: ImageNet statistics for pretrained backbones, ``(None, None)`` otherwise."""
    if getattr(extractor, "pretrained", False):
        return IMAGENET_MEAN, IMAGENET_STD
    return None, None
