"""Label-free reference scores used by examples and benchmarks (not an estimator)."""

import numpy as np
import torch
import torch.nn.functional as F

from ._images import ImageInput
from .nn.backbones import IMAGENET_MEAN, IMAGENET_STD, create_feature_extractor

__all__ = ["nearest_neighbour_scores"]


def nearest_neighbour_scores(X_train, X_test, *, image_size, bank_size=16384, batch_size=64,
                             random_state=0):
    """Max over test patches of the distance to the nearest training patch.

    Frozen EfficientNet-Lite0 (embedded ImageNet weights), levels 2 and 3
    aligned at stride 8 and averaged over 3x3 neighbourhoods; no training, no
    labels. The bank is a random ``bank_size`` subsample of the training
    patches, which keeps the search to seconds on a CPU.

    Returns
    -------
    scores : ndarray of shape (n_test,)
        Anomaly scores, higher = more anomalous.
    """
    extractor = create_feature_extractor("efficientnet_lite0", out_indices=(2, 3)).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def patches(X):
        data, out = ImageInput(X), []
        for start in range(0, len(data), batch_size):
            x = data.load(range(start, min(start + batch_size, len(data))), image_size)
            with torch.no_grad():
                f2, f3 = extractor((x - mean) / std)
                f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear")
                f = F.avg_pool2d(torch.cat([f2, f3], 1), 3, 1, 1)
            out.append(f.flatten(2).transpose(1, 2))  # (b, P, C)
        return torch.cat(out)

    bank = patches(X_train).flatten(0, 1)
    keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(random_state))
    bank = bank[keep[:bank_size]]
    return np.asarray([torch.cdist(f, bank).min(dim=1).values.max().item()
                       for f in patches(X_test)])
