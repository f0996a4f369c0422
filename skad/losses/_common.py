"""Argument checks and reductions shared by the losses."""

import torch
from torch import Tensor

from .._checks import check_float_tensor

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction, func_name):
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"The 'reduction' parameter of {func_name} must be one of {REDUCTIONS}. "
            f"Got {reduction!r} instead."
        )


def check_pair(input, target, input_name, func_name):
    """Validate an (input, target) pair and return the target as input's dtype."""
    check_float_tensor(input, input_name, func_name)
    if not isinstance(target, Tensor):
        raise TypeError(
            f"The 'target' parameter of {func_name} must be a torch.Tensor. "
            f"Got {type(target).__name__} instead."
        )
    if target.shape != input.shape:
        raise ValueError(
            f"The 'target' parameter of {func_name} must have the same shape as "
            f"'{input_name}' {tuple(input.shape)}. Got shape {tuple(target.shape)} instead."
        )
    target = target.to(device=input.device, dtype=input.dtype)
    # NaN fails both comparisons, so test it explicitly: a NaN label would
    # silently poison the whole batch's loss.
    if target.numel() and bool(((target < 0) | (target > 1) | torch.isnan(target)).any()):
        raise ValueError(
            f"The 'target' parameter of {func_name} must contain values in [0, 1] "
            "(1 = anomaly, 0 = normal; soft labels allowed). Translate public labels "
            "(-1 anomaly, +1 normal) with (1 - y) / 2 first."
        )
    return target


def reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # An empty batch has no mean; returning a graph-connected zero keeps a
    # training step that happens to draw no sample of some kind well defined.
    if loss.numel() == 0:
        return loss.sum()
    return loss.mean()
