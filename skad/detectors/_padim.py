"""PaDiMDetector (Defard et al., ICPR'20): per-position Gaussians of frozen patch features."""

import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from ..nn.padim import PaDiMModule, PatchGaussianEstimator
from ._frozen import FrozenFeatureDetector, tukey_offset

__all__ = ["PaDiMDetector"]


class PaDiMDetector(FrozenFeatureDetector):
    """PaDiM: Mahalanobis distance of each patch to a Gaussian fitted at its position.

    A frozen pretrained backbone embeds every image as a grid of patch
    features (three feature levels, the coarser upsampled to the finest grid
    and concatenated); a random subset of ``n_features`` channels is kept.
    One multivariate Gaussian per grid position is fitted to the unlabelled
    training images, its covariance regularised by ``reg_covar * I``. An
    image's anomaly score is the largest Mahalanobis distance of its patches;
    the distance map, upsampled and smoothed, is its anomaly map. Nothing is
    trained. Labelled anomalies (``y == -1``) are left out of the Gaussians.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm model name, or a module returning feature maps.
    pretrained : bool or path-like, default=True
        ImageNet weights available offline (embedded for
        ``"efficientnet_lite0"``), ``False`` for random init, or a weights file.
    image_size : int, default=224
        Side of the square images the backbone sees. Images must be scored at
        the size used in fit (they are resized to it).
    out_indices : tuple of int, default=(1, 2, 3)
        Backbone levels concatenated into the patch features (strides 4, 8
        and 16 for EfficientNet-Lite0, 176 channels on a ``image_size / 4``
        grid; the paper's first three ResNet stages).
    n_features : int or None, default=100
        Channels kept, drawn at random (seeded by ``random_state``) from the
        concatenated levels, as in the paper (100 of 448 for ResNet-18);
        ``None`` keeps them all.
    reg_covar : float, default=0.01
        Added to the diagonal of each covariance (the paper's 0.01).
    batch_size : int, default=32
        Images per backbone batch, in fit and scoring.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags images scoring above the upper Tukey fence
        ``Q3 + 1.5 IQR`` of the unlabelled training images' scores; a float
        flags that fraction of the training data. Both use in-sample scores:
        the training images are scored against Gaussians fitted on
        themselves, which scores them lower than new normal images (more so
        when ``n_features`` approaches the number of images), so ``predict``
        flags new normal images more often than the threshold suggests (ELPV
        at 128 px, clean training set, seed 42: 0.3% of the training images
        but 5.8% of the test's normal images flagged, against 1.6% for
        PatchCore's leave-own-image-out fence; PaDiM flags 1.9% at 10%
        contamination; ``benchmarks/results/auto_threshold.md``). Rank by ``score_samples``,
        or set the threshold on held-out normal images with
        :func:`skad.thresholds.calibrate`, where that matters.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset.
    verbose : int, default=0
        ``>= 1`` prints the duration of each fitting stage.

    Attributes
    ----------
    module_ : skad.nn.padim.PaDiMModule
        The frozen embedding and the per-position Gaussians (nothing is trained).
    offset_ : float
        ``decision_function = score_samples - offset_``.
    channel_index_ : ndarray of shape (n_features,)
        Channels of the concatenated levels that are modelled.
    device_ : str
        Device the net lives on.
    input_kind_ : "images"

    See Also
    --------
    PatchCoreDetector : nearest-neighbour distance to a memory bank instead.

    Notes
    -----
    Fitting streams the training images twice (statistics, then training
    scores for ``offset_``) and keeps ``(image_size / 4) ** 2`` covariance
    matrices of ``n_features ** 2`` entries (41 MB at 128 px with 100
    features).

    References
    ----------
    .. [1] T. Defard, A. Setkov, A. Loesch, R. Audigier, "PaDiM: a patch
       distribution modeling framework for anomaly detection and localization",
       ICPR Workshops 2020. :doi:`10.1007/978-3-030-68799-1_35`

    Examples
    --------
    >>> import numpy as np
    >>> from skad import PaDiMDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(100, 130, size=(12, 32, 32)).astype(np.uint8)
    >>> det = PaDiMDetector(backbone="test_efficientnet", pretrained=False, image_size=32,
    ...                     n_features=16, random_state=0).fit(X)
    >>> X_new = X[:2].copy()
    >>> X_new[1, 8:24, 8:24] = 255
    >>> scores = det.score_samples(X_new)
    >>> bool(scores[1] < scores[0])
    True
    """

    _parameter_constraints = {
        **FrozenFeatureDetector._parameter_constraints,
        "n_features": [Interval(Integral, 1, None, closed="left"), None],
        "reg_covar": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=224,
        out_indices=(1, 2, 3),
        n_features=100,
        reg_covar=0.01,
        batch_size=32,
        device="auto",
        contamination="auto",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.out_indices = out_indices
        self.n_features = n_features
        self.reg_covar = reg_covar
        self.batch_size = batch_size
        self.device = device
        self.contamination = contamination
        self.random_state = random_state
        self.verbose = verbose

    def _build_module(self, data):
        embedding = self._patch_embedding(pool_size=1)
        if self.n_features is not None and self.n_features > embedding.channels:
            raise ValueError(
                f"n_features={self.n_features} exceeds the {embedding.channels} channels of the "
                f"backbone levels out_indices={tuple(self.out_indices)}; pass "
                f"n_features <= {embedding.channels}, or None to keep them all."
            )
        return PaDiMModule(embedding, torch.arange(self.n_features or embedding.channels))

    def _fit_head(self, cache, target, generator, masks=None):
        module = self.module_
        normal = np.flatnonzero(target == 0)
        if len(normal) < 2:
            raise ValueError(
                f"PaDiM fits a covariance per position and needs at least 2 unlabelled images; "
                f"y has {len(normal)}. Pass more images with y = +1."
            )
        if self.n_features is not None:
            # before the first encoder pass: the cache holds the selected channels only
            draw = torch.randperm(module.embedding.channels, generator=generator)
            module.channel_index = draw[: self.n_features].sort()[0].to(self.device_)
        start = time.perf_counter()
        estimator = PatchGaussianEstimator()
        for _, emb in cache.batches(normal):
            estimator.update(emb)
        mean, cov = estimator.mean_and_covariance()
        module.set_statistics(mean, cov, reg_covar=self.reg_covar)
        self.channel_index_ = module.channel_index.cpu().numpy()
        self._log(f"Gaussians of {len(mean)} positions from {len(normal)} images", start)
        return self._score_features(cache)

    def _auto_offset(self, data, target, train_scores):
        """Tukey fence of the unlabelled training images' (in-sample) scores."""
        return tukey_offset(train_scores[target == 0])

    def _export_graph(self):
        """Score and map as one static graph (:class:`skad.nn.export.PaDiMGraph`)."""
        from ..nn.export import PaDiMGraph

        return PaDiMGraph(self.module_, self.image_size, 4.0 * self.image_size / 224)
