"""PaDiM in pure torch: per-position Gaussians of patch embeddings, Mahalanobis distance maps."""

import torch
from torch import Tensor

from .frozen import FrozenPatchModule
from .outputs import PatchScoreOutput

__all__ = ["PaDiMModule", "PatchGaussianEstimator", "mahalanobis"]


class PatchGaussianEstimator:
    """Running mean and covariance of embeddings, one Gaussian per grid position.

    Sums are accumulated in float64, so batches can be streamed without
    keeping the embeddings.

    Examples
    --------
    >>> import torch
    >>> est = PatchGaussianEstimator()
    >>> est.update(torch.tensor([[[[0.0]], [[1.0]]], [[[2.0]], [[1.0]]]]))  # (2, 2, 1, 1)
    >>> mean, cov = est.mean_and_covariance()
    >>> mean.tolist(), cov.tolist()
    ([[1.0, 1.0]], [[[2.0, 0.0], [0.0, 0.0]]])
    """

    def __init__(self):
        self.n = 0
        self.sum = None
        self.outer = None

    def update(self, embedding):
        """Add a batch.

        Parameters
        ----------
        embedding : Tensor of shape (B, d, h, w)
        """
        x = _position_major(embedding.detach(), dtype=torch.float64)
        if self.sum is None:
            self.sum = x.new_zeros(x.shape[0], x.shape[2])
            self.outer = x.new_zeros(x.shape[0], x.shape[2], x.shape[2])
        self.n += x.shape[1]
        self.sum += x.sum(dim=1)
        self.outer.baddbmm_(x.transpose(1, 2), x)

    def mean_and_covariance(self):
        """Per-position sample mean and unbiased covariance (``n - 1`` normalisation).

        Returns
        -------
        mean : Tensor of shape (h * w, d), dtype float64
        covariance : Tensor of shape (h * w, d, d), dtype float64
        """
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples; got {self.n}.")
        mean = self.sum / self.n
        cov = (self.outer - self.n * mean[:, :, None] * mean[:, None, :]) / (self.n - 1)
        return mean, (cov + cov.transpose(1, 2)) / 2


def _position_major(embedding, dtype=None):
    """``(B, d, h, w) -> (h * w, B, d)``, contiguous, in one copy.

    Batched products on strided operands are ~10x slower on CPU; from a
    channels-last embedding each ``d``-vector is copied as one run.
    """
    b, d, h, w = embedding.shape
    view = embedding.permute(2, 3, 0, 1).reshape(h * w, b, d)
    out = torch.empty(view.shape, dtype=dtype or view.dtype, device=view.device)
    return out.copy_(view)


def mahalanobis(x, mean, precision):
    """Mahalanobis distance of each position's vector to its Gaussian.

    Parameters
    ----------
    x : Tensor of shape (P, B, d)
    mean : Tensor of shape (P, d)
    precision : Tensor of shape (P, d, d)
        Inverse covariance of each position.

    Returns
    -------
    Tensor of shape (P, B)
        ``sqrt((x - mean)^T precision (x - mean))``.
    """
    # written contiguous whatever the layout of x: bmm on strided operands is ~10x slower
    delta = torch.empty(x.shape, dtype=torch.result_type(x, mean), device=x.device)
    torch.sub(x, mean[:, None, :], out=delta)
    return torch.bmm(delta, precision).mul_(delta).sum(dim=2).clamp_min_(0.0).sqrt_()


class PaDiMModule(FrozenPatchModule):
    """PaDiM's scoring network: Mahalanobis distance of each patch to its position's Gaussian.

    Takes images in [0, 1] of shape ``(B, 3, S, S)`` and returns
    ``(scores, distances)``: the image anomaly score ``(B,)``, the largest
    patch distance, and the Mahalanobis map ``(B, h, w)``. The Gaussians are
    set with :meth:`set_statistics`.

    Parameters
    ----------
    embedding : PatchEmbedding
        Multi-level patch features (usually without local averaging).
    channel_index : Tensor of shape (d,), dtype int64
        Channels of the embedding kept (PaDiM's random dimensionality reduction).

    Attributes
    ----------
    mean : Tensor of shape (h * w, d)
        Buffer.
    precision : Tensor of shape (h * w, d, d)
        Buffer, inverse of the regularised covariance.

    References
    ----------
    .. [1] T. Defard et al., "PaDiM: a patch distribution modeling framework for
       anomaly detection and localization", ICPR Workshops 2020.
       :doi:`10.1007/978-3-030-68799-1_35`
    """

    def __init__(self, embedding, channel_index):
        super().__init__(embedding)
        d = len(channel_index)
        self.register_buffer("channel_index", torch.as_tensor(channel_index, dtype=torch.long))
        self.register_buffer("mean", torch.empty(0, d))
        self.register_buffer("precision", torch.empty(0, d, d))

    def select(self, embedding):
        """Keep the channels of ``channel_index``: ``(B, C, h, w) -> (B, d, h, w)``."""
        return embedding.index_select(1, self.channel_index)

    def embed(self, x: Tensor) -> Tensor:
        """``select(embedding(x))``, each level's channels selected before it is upsampled."""
        return self.embedding(x, channel_index=self.channel_index)

    @torch.no_grad()
    def set_statistics(self, mean, covariance, *, reg_covar=0.01):
        """Set the Gaussians; the covariances are regularised by ``reg_covar * I`` and inverted.

        Parameters
        ----------
        mean : Tensor of shape (h * w, d)
        covariance : Tensor of shape (h * w, d, d)
        reg_covar : float, default=0.01
            Added to each covariance's diagonal (the paper's ``epsilon I``).
        """
        cov = covariance.double()
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        chol = torch.linalg.cholesky(cov + reg_covar * eye)
        device = self.mean.device
        self.precision = torch.cholesky_inverse(chol).float().to(device)
        self.mean = mean.float().to(device)

    def score_embedding(self, embedding):
        """Image scores and Mahalanobis maps of embedded images.

        Parameters
        ----------
        embedding : Tensor of shape (B, d, h, w)
            The selected channels, as :meth:`embed` returns them.

        Returns
        -------
        PatchScoreOutput
            ``score`` (B,) and ``distances`` (B, h, w).
        """
        if len(self.mean) == 0:
            raise RuntimeError("the Gaussians are not set; call set_statistics first.")
        b, d, h, w = embedding.shape
        if h * w != len(self.mean):
            raise ValueError(
                f"the embedding has {h}x{w} positions but the Gaussians were fitted on "
                f"{len(self.mean)}; score images of the size used in fit."
            )
        x = embedding.float().permute(2, 3, 0, 1).reshape(h * w, b, d)  # a view if channels-last
        dist = mahalanobis(x, self.mean, self.precision)  # (P, B)
        dist = dist.T.reshape(b, h, w)
        return PatchScoreOutput(dist.flatten(1).max(dim=1).values, dist)
