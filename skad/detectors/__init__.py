"""skad's detectors, one private module per method."""

from ._adl import AdaptiveDeviationDetector
from ._devnet import DeviationNetworkDetector

__all__ = ["AdaptiveDeviationDetector", "DeviationNetworkDetector"]
