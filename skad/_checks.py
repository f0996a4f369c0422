"""Argument checks shared by skad's pure-torch functions (losses, instance reweighting)."""

from torch import Tensor

__all__ = ["check_float_tensor"]


def check_float_tensor(value, name, func_name):
    """Raise a TypeError naming the parameter unless ``value`` is a floating-point tensor.

    Parameters
    ----------
    value : object
        The argument.
    name : str
        Its parameter name, for the message.
    func_name : str
        The public function it was passed to, for the message.
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        dtype = " of dtype " + str(value.dtype) if isinstance(value, Tensor) else ""
        raise TypeError(
            f"The '{name}' parameter of {func_name} must be a floating-point "
            f"torch.Tensor. Got {type(value).__name__}{dtype} instead."
        )
