"""Label-free reference scores used by examples and benchmarks (not an estimator)."""

import torch

from ._images import ImageInput, iter_image_batches
from .nn.backbones import IMAGENET_MEAN, IMAGENET_STD, create_feature_extractor
from .nn.frozen import PatchEmbedding
from .nn.patchcore import nearest_neighbours

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
    extractor = create_feature_extractor("efficientnet_lite0", out_indices=(2, 3))
    embedding = PatchEmbedding(extractor, mean=IMAGENET_MEAN, std=IMAGENET_STD, pool_size=3)

    def patches(X):
        out = []
        for _, x in iter_image_batches(ImageInput(X), image_size, batch_size):
            with torch.no_grad():
                out.append(embedding(x).flatten(2).transpose(1, 2))  # (b, P, C)
        return torch.cat(out)

    bank = patches(X_train).flatten(0, 1)
    keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(random_state))
    bank = bank[keep[:bank_size]].contiguous()
    test = patches(X_test)
    distances = nearest_neighbours(test.flatten(0, 1), bank, return_indices=False)[0]
    return distances.reshape(test.shape[:2]).amax(dim=1).double().numpy()
