"""Loading on another machine: generators and tensors whose device may be missing there.

Used by :mod:`skad.persistence` and :mod:`skad._model_state`; the names under
which the first model format pickled them stay importable from
:mod:`skad.persistence`.
"""

import io
import pickle

__all__ = ["CPUUnpickler", "PortableGenerator", "device_available", "restore_generator"]


class PortableGenerator:
    """Pickles a device-bound ``torch.Generator`` so that it loads without that device."""

    def __init__(self, generator):
        self.device = str(generator.device)
        self.seed = int(generator.initial_seed())
        self.state = bytes(generator.get_state().numpy().tobytes())

    def __reduce__(self):
        return restore_generator, (self.device, self.seed, self.state)


def restore_generator(device, seed, state):
    """Re-create a pickled generator; on the CPU, from its seed, if ``device`` is missing."""
    import torch

    if device_available(device):
        generator = torch.Generator(device=device)
        generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        return generator
    return torch.Generator().manual_seed(seed)


def device_available(device):
    """Whether ``device`` (``"cpu"``, ``"cuda:1"``, ...) exists on this machine."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator is not None and accelerator.is_available()
                and accelerator.current_accelerator().type == device.type)


class CPUUnpickler(pickle.Unpickler):
    """Maps tensors to the CPU where their device is missing."""

    def find_class(self, module, name):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage
        return super().find_class(module, name)


def _load_storage(data):
    import torch

    # torch's own _load_from_bytes keeps the saved device, which fails without CUDA
    location = None if torch.cuda.is_available() else "cpu"
    return torch.load(io.BytesIO(data), map_location=location, weights_only=True)
