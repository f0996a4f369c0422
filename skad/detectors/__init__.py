"""skad's detectors, one private module per method (the list is :mod:`skad._registry`)."""

import importlib

from .._registry import DETECTORS

__all__ = sorted(cls for _, cls in DETECTORS.values())

for _module, _cls in DETECTORS.values():
    globals()[_cls] = getattr(importlib.import_module(_module), _cls)
del _module, _cls
