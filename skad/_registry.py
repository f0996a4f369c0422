"""The one list of skad's detectors.

``skad.__all__``, ``skad.detectors``, the CLI's ``--detector`` choices, the
documentation's API list and the common contract tests are all derived from
:data:`DETECTORS`: a new detector is one module under ``skad/detectors/`` plus
one line here. Importing this module imports no detector (and no torch).
"""

import importlib

__all__ = ["DETECTORS", "detector_class"]

#: Short name (the CLI's ``--detector``) -> ``(private module, class name)``.
DETECTORS = {
    "adl": ("skad.detectors._adl", "AdaptiveDeviationDetector"),
    "bgad": ("skad.detectors._bgad", "BoundaryGuidedDetector"),
    "devnet": ("skad.detectors._devnet", "DeviationNetworkDetector"),
    "dra": ("skad.detectors._dra", "DisentangledResidualDetector"),
    "multicue": ("skad.detectors._multicue", "MultiCueDetector"),
    "padim": ("skad.detectors._padim", "PaDiMDetector"),
    "patchcore": ("skad.detectors._patchcore", "PatchCoreDetector"),
}


def detector_class(name):
    """The detector class registered under short name ``name`` (``"adl"``) or class name.

    Raises
    ------
    KeyError
        If no detector has that name.
    """
    for short, (module, cls) in DETECTORS.items():
        if name in (short, cls):
            return getattr(importlib.import_module(module), cls)
    raise KeyError(name)
