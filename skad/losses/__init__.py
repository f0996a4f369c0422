"""Every method's objective: loss functions and the criterion modules built on them.

Pure functions of tensors with keyword-only hyperparameters, and thin
:class:`torch.nn.Module` criteria (``(outputs, target) -> loss``) that a
detector hands to its skorch net. Nothing here touches scikit-learn or skorch.

Internally a target of 1 means *anomaly* and 0 means *normal* (the papers'
convention); the public estimator API uses -1 for anomalies and translates at
its boundary.
"""

from ._bgad import BGADLoss, bgspp_loss
from ._deviation import ADLLoss, DeviationLoss, deviation_loss, focal_loss, two_means_labels
from ._dra import DRA_ROUTES, DRALoss, dra_loss

__all__ = [
    "ADLLoss",
    "BGADLoss",
    "DRALoss",
    "DRA_ROUTES",
    "DeviationLoss",
    "bgspp_loss",
    "deviation_loss",
    "dra_loss",
    "focal_loss",
    "two_means_labels",
]
