"""skad's detectors, one private module per method."""

from ._adl import AdaptiveDeviationDetector
from ._devnet import DeviationNetworkDetector
from ._multicue import MultiCueDetector

__all__ = [
    "AdaptiveDeviationDetector",
    "DeviationNetworkDetector",
    "MultiCueDetector",
]
