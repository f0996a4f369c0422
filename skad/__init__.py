"""skad: scikit-learn estimators for visual anomaly detection.

Detectors follow scikit-learn's outlier-detector contract (as
:class:`~sklearn.ensemble.IsolationForest`): ``score_samples`` is higher for
more normal images, ``predict`` returns -1 for anomalies and +1 for normal
images, and ``fit(X, y)`` takes ``y = -1`` for known anomalies and ``+1`` for
unlabelled images assumed normal.

The estimators are imported lazily, so that ``skad.metrics`` or
``skad.datasets`` do not pay for importing torch.
"""

import importlib

from ._registry import DETECTORS

__version__ = "0.1.0.dev0"

#: Public name -> module it is imported from on first use.
_LAZY = {
    "ContaminationInjector": "skad.preprocessing",
    **{cls: module for module, cls in DETECTORS.values()},
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skad' has no attribute {name!r}")


def __dir__():
    return __all__
