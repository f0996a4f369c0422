"""skad's detectors, one private module per method."""

from ._devnet import DeviationNetworkDetector

__all__ = ["DeviationNetworkDetector"]
