"""skad's detectors, one private module per method."""

from ._adl import AdaptiveDeviationDetector
from ._devnet import DeviationNetworkDetector
from ._multicue import MultiCueDetector
from ._padim import PaDiMDetector
from ._patchcore import PatchCoreDetector

__all__ = [
    "AdaptiveDeviationDetector",
    "DeviationNetworkDetector",
    "MultiCueDetector",
    "PaDiMDetector",
    "PatchCoreDetector",
]
