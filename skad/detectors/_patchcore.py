"""PatchCoreDetector (Roth et al., CVPR'22)."""

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from ..nn.patchcore import PatchCoreModule, greedy_coreset, labelled_anomaly_mask
from ._frozen import FrozenFeatureDetector, tukey_offset

__all__ = ["PatchCoreDetector"]


class PatchCoreDetector(FrozenFeatureDetector):
    """PatchCore: nearest-neighbour distance to a coreset memory bank of normal patches.

    A frozen pretrained backbone embeds every image as a grid of patch
    features (two mid-level feature levels, the coarser upsampled to the finer
    grid, concatenated and averaged over 3x3 neighbourhoods).
    The memory bank holds the patches of the unlabelled training images,
    reduced by greedy k-center coreset subsampling. An image's anomaly score
    is the largest distance from one of its patches to the nearest bank patch,
    optionally reweighted by the density of the bank around that neighbour;
    the patch distances, upsampled and smoothed, are its anomaly map. Nothing
    is trained.

    Labelled anomalies (``y == -1``) never enter the bank. With
    ``prune_with_labels=True`` they also remove the bank patches that look
    more like one of their patches than like any normal patch of another
    training image, which removes defects of contaminants resembling the
    labelled ones.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm model name, or a module returning feature maps.
    pretrained : bool or path-like, default=True
        ImageNet weights available offline (embedded for
        ``"efficientnet_lite0"``), ``False`` for random init, or a weights file.
    image_size : int, default=224
        Side of the square images the backbone sees.
    out_indices : tuple of int, default=(2, 3)
        Backbone levels concatenated into the patch features (strides 8 and 16
        for EfficientNet-Lite0: 152 channels on a ``image_size / 8`` grid).
    coreset_ratio : float in (0, 1], default=0.01
        Fraction of the training patches kept in the memory bank; ``1.0``
        keeps them all (no subsampling). Greedy selection costs
        ``O(n_patches * bank size)``: on 1,256 ELPV images at 128 px (322k
        patches, a 3.2k-patch bank) it takes 6 s on 2 idle CPU cores, and a
        whole fit 20 s. Scoring costs ``2 * patches * bank * 152`` flops per
        image on top of the backbone. The paper found 1% close to 10% and 25%
        on MVTec AD; on ELPV at 128 px, 1% matches a random 16k-patch bank.
    projection_dim : int or None, default=128
        Dimension of the random projection on which the coreset measures
        distances (as the paper); ``None`` uses the features themselves.
    reweight_neighbors : int >= 2 or None, default=None
        ``b`` of the paper's density reweighting: the image score is
        multiplied by ``1 - softmax(d)_0``, ``d`` the distances from the most
        anomalous patch to its nearest bank patch ``m*`` and to the ``b - 1``
        bank neighbours of ``m*``. ``None`` keeps the plain maximum distance.
    prune_with_labels : bool, default=False
        Drop the bank patches closer to a labelled-anomaly patch than to their
        nearest patch in the other unlabelled images (a defence against
        contamination; needs labelled anomalies, warns without). Costs one
        search of the bank against all training patches.
    batch_size : int, default=32
        Images per backbone batch, in fit and scoring.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags images scoring above the upper Tukey fence
        ``Q3 + 1.5 IQR`` of the leave-own-image-out scores of the unlabelled
        training images (each scored against the bank without its own
        patches, like a new image); a float flags that fraction of the
        training data. A fence is no promised rate (ELPV at 128 px, seed 42:
        1.6% of the held-out normal cells flagged with a clean training set,
        0.3% at 10% contamination; ``benchmarks/results/auto_threshold.md``);
        :func:`skad.thresholds.calibrate` sets one from held-out normal images.
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset's projection and first patch.
    verbose : int, default=0
        ``>= 1`` prints the duration of each fitting stage.

    Attributes
    ----------
    module_ : skad.nn.patchcore.PatchCoreModule
        The frozen embedding and the memory bank (nothing is trained).
    offset_ : float
        ``decision_function = score_samples - offset_``.
    bank_origin_ : ndarray of shape (n_bank, 2)
        Training image index and patch index (row-major on the feature grid)
        of each memory-bank patch.
    pruned_origin_ : ndarray of shape (n_pruned, 2)
        The same for the coreset patches removed by ``prune_with_labels``.
    device_ : str
        Device the net lives on.
    input_kind_ : "images"

    See Also
    --------
    PaDiMDetector : per-position Gaussians instead of a memory bank.
    sklearn.ensemble.IsolationForest : the outlier contract skad follows.

    Notes
    -----
    The nearest-neighbour search holds at most 2**20 distances (4 MiB) at a
    time, whatever the bank size. Fitting keeps every training patch in memory
    (``n_images * (image_size / 8) ** 2 * 152`` floats: 200 MB for 1,266
    images at 128 px), twice over when anomalies are labelled (the bank's
    candidates are then a copy of the unlabelled images' patches).

    The k-center coreset picks the most outlying patches first, so under
    contamination it over-represents the contaminants: on ELPV at 128 px with
    10% (20%) contaminated training images, 35% (52%) of the bank came from
    them. ``prune_with_labels`` removes such patches precisely (95% of the
    removed patches came from contaminants) but few of them (about 2%).

    References
    ----------
    .. [1] K. Roth, L. Pemula, J. Zepeda, B. Schölkopf, T. Brox, P. Gehler,
       "Towards total recall in industrial anomaly detection", CVPR 2022.
       :doi:`10.1109/CVPR52688.2022.01392`

    Examples
    --------
    >>> import numpy as np
    >>> from skad import PatchCoreDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(100, 130, size=(12, 32, 32)).astype(np.uint8)
    >>> det = PatchCoreDetector(backbone="test_efficientnet", pretrained=False,
    ...                         image_size=32, coreset_ratio=0.5, random_state=0).fit(X)
    >>> X_new = X[:2].copy()
    >>> X_new[1, 8:24, 8:24] = 255
    >>> scores = det.score_samples(X_new)
    >>> bool(scores[1] < scores[0])
    True
    """

    _parameter_constraints = {
        **FrozenFeatureDetector._parameter_constraints,
        "coreset_ratio": [Interval(Real, 0, 1, closed="right")],
        "projection_dim": [Interval(Integral, 1, None, closed="left"), None],
        "reweight_neighbors": [Interval(Integral, 2, None, closed="left"), None],
        "prune_with_labels": ["boolean"],
    }

    def __init__(
        self,
        *,
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=224,
        out_indices=(2, 3),
        coreset_ratio=0.01,
        projection_dim=128,
        reweight_neighbors=None,
        prune_with_labels=False,
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
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.reweight_neighbors = reweight_neighbors
        self.prune_with_labels = prune_with_labels
        self.batch_size = batch_size
        self.device = device
        self.contamination = contamination
        self.random_state = random_state
        self.verbose = verbose

    def _build_module(self, data):
        return PatchCoreModule(self._patch_embedding(pool_size=3),
                               reweight_neighbors=self.reweight_neighbors)

    def _fit_head(self, cache, target, generator, masks=None):
        module = self.module_
        start = time.perf_counter()
        embeddings = cache.all()
        n, c, h, w = embeddings.shape
        self._log(f"embedded {n} images", start)
        patches = embeddings.permute(0, 2, 3, 1).reshape(n, h * w, c)
        normal = torch.as_tensor(np.flatnonzero(target == 0), device=patches.device)
        # no copy of the training patches when nothing is labelled
        candidates = (patches[normal] if target.any() else patches).reshape(-1, c)
        groups = normal.repeat_interleave(h * w)
        n_select = max(1, math.ceil(self.coreset_ratio * len(candidates)))
        if n_select < len(candidates):
            start = time.perf_counter()
            keep = greedy_coreset(candidates, n_select, projection_dim=self.projection_dim,
                                  generator=generator)
            self._log(f"coreset of {n_select} / {len(candidates)} patches", start)
        else:
            keep = torch.arange(len(candidates), device=candidates.device)
        keep, pruned = self._prune(keep, candidates, groups, patches, target)
        if self.reweight_neighbors is not None and len(keep) < self.reweight_neighbors:
            raise ValueError(
                f"reweight_neighbors={self.reweight_neighbors} needs a memory bank of at least "
                f"that many patches; this fit kept {len(keep)}. Raise coreset_ratio, pass more "
                "training images, or pass reweight_neighbors=None."
            )
        module.set_memory_bank(candidates[keep])
        positions = torch.arange(len(candidates), device=keep.device) % (h * w)

        def origin(rows):
            return torch.stack([groups[rows], positions[rows]], 1).cpu().numpy()

        self.bank_origin_ = origin(keep)
        self.pruned_origin_ = origin(pruned)
        if self.contamination == "auto":
            return None  # the auto threshold scores the images its own way
        return self._score_embeddings(embeddings)

    def _auto_offset(self, data, target, train_scores):
        """Tukey fence of the unlabelled images' leave-own-image-out scores (cached features)."""
        start = time.perf_counter()
        normal = np.flatnonzero(target == 0)
        embeddings = self._cache.all(normal)
        device = embeddings.device
        scores = self._score_embeddings(
            embeddings, query_groups=torch.as_tensor(normal, device=device),
            bank_groups=torch.as_tensor(self.bank_origin_[:, 0], device=device))
        # an image whose patches fill the whole bank has no neighbour left
        scores = scores[np.isfinite(scores)]
        if len(scores) == 0:
            scores = self._score_embeddings(embeddings)
        self._log("leave-own-image-out training scores", start)
        return tukey_offset(scores)

    def _export_graph(self):
        """Score and map as one static graph (:class:`skad.nn.export.PatchCoreGraph`)."""
        from ..nn.export import PatchCoreGraph

        return PatchCoreGraph(self.module_, self.image_size, 4.0 * self.image_size / 224)

    def _prune(self, keep, candidates, groups, patches, target):
        """Split ``keep`` into (kept, pruned) rows of ``candidates`` with the labelled anomalies."""
        no_rows = keep[:0]
        if not self.prune_with_labels:
            return keep, no_rows
        if not target.any():
            warnings.warn(
                "prune_with_labels=True but y has no labelled anomaly (-1): nothing to prune "
                "the memory bank with.", UserWarning,
                # _prune, _fit_head, _fit_model, BaseDetector._fit, FrozenFeatureDetector._fit,
                # fit, _fit_context, the caller
                stacklevel=8,
            )
            return keep, no_rows
        if np.sum(target == 0) < 2:
            raise ValueError(
                "prune_with_labels=True compares each bank patch with the other unlabelled "
                f"images, but y has {int(np.sum(target == 0))} unlabelled image (+1). Pass more "
                "images with y = +1, or prune_with_labels=False."
            )
        start = time.perf_counter()
        anomalous = torch.as_tensor(np.flatnonzero(target == 1), device=patches.device)
        mask = labelled_anomaly_mask(
            candidates[keep], patches[anomalous].reshape(-1, patches.shape[-1]), candidates,
            bank_groups=groups[keep], reference_groups=groups,
        )
        if bool(mask.all()):
            raise ValueError(
                "prune_with_labels=True removed the whole memory bank: every bank patch is "
                "closer to a labelled anomaly than to the other images. Check y (-1 = known "
                "anomaly) or pass prune_with_labels=False."
            )
        self._log(f"pruned {int(mask.sum())} bank patches", start)
        return keep[~mask], keep[mask]

    def _score_embeddings(self, embeddings, **groups):
        """Anomaly scores of embeddings in batches; ``query_groups`` is split with them."""
        module = self.module_
        with torch.no_grad():
            scores = []
            for start in range(0, len(embeddings), self.batch_size):
                part = slice(start, start + self.batch_size)
                q = groups.get("query_groups")
                kwargs = {} if q is None else {**groups, "query_groups": q[part]}
                scores.append(module.score_embedding(embeddings[part], **kwargs).score)
        return torch.cat(scores).double().cpu().numpy()
