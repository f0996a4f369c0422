"""Dataset loaders and toy generators for visual anomaly detection.

Loaders return a :class:`~sklearn.utils.Bunch` whose ``target`` follows
scikit-learn's outlier convention: +1 for normal images, -1 for anomalous ones.
"""

from ._elpv import load_elpv
from ._folders import load_folder, load_mvtec, load_visa
from ._synthetic import make_defect_images

__all__ = [
    "load_elpv",
    "load_folder",
    "load_mvtec",
    "load_visa",
    "make_defect_images",
]
