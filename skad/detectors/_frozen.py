"""Frozen-feature detectors: a frozen encoder run once per training image, its features cached."""

import time
from abc import abstractmethod

import numpy as np
import torch

from .._images import iter_image_batches
from ..base import BaseDetector
from ..nn.anomaly_map import smoothed_map
from ._common import BACKBONE_CONSTRAINTS, feature_extractor, input_normalization, seeded

__all__ = ["FeatureCache", "FrozenFeatureDetector", "tukey_offset"]

#: Default bound of a :class:`FeatureCache` (4 GiB).
CACHE_BYTES = 4 * 2**30


def tukey_offset(anomaly_scores):
    """``offset_`` flagging anomaly scores above the upper Tukey fence ``Q3 + 1.5 IQR``."""
    q1, q3 = np.percentile(anomaly_scores, [25.0, 75.0])
    return -float(q3 + 1.5 * (q3 - q1))


def _as_levels(features):
    """``(tuple of tensors, was a tuple)``: an encoder's output as a tuple of levels."""
    if isinstance(features, torch.Tensor):
        return (features,), False
    return tuple(features), True


class FeatureCache:
    """The features of a frozen encoder for a set of images, computed once per image.

    Images are encoded in batches the first time their features are asked
    for; the features of as many images as ``max_bytes`` allows are kept (in
    order of first request, in ``dtype``), the others are computed again each
    time they are asked for, so that memory stays bounded whatever the size
    of the training set. A fit asks for every training image at least once,
    so with the default bound each image goes through the encoder once.

    Parameters
    ----------
    encode : callable
        ``(B, 3, S, S)`` images in [0, 1] on ``device`` -> features: a tensor
        ``(B, ...)`` or a tuple of them (one per feature level). The output
        for each image must not depend on the rest of its batch (true for a
        frozen network in evaluation mode).
    data : ImageInput
        The images.
    image_size : int
        Side the images are resized to.
    batch_size : int
        Images per encoder call.
    device : str
        Where the encoder runs and the features are kept.
    dtype : torch.dtype or None, default=None
        Storage dtype of the kept features (``torch.float16`` halves the
        memory); ``None`` keeps the encoder's dtype. Features are returned in
        the encoder's dtype, always rounded through ``dtype`` (so the first
        request and later ones give the same values).
    max_bytes : int, default=4 GiB
        Most bytes of features kept.

    Attributes
    ----------
    n_encoded : int
        Images that went through the encoder so far (the cost of the cache).
    nbytes : int
        Bytes of features kept.
    """

    def __init__(self, encode, data, *, image_size, batch_size, device, dtype=None,
                 max_bytes=CACHE_BYTES):
        self.encode = encode
        self.data = data
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.n_encoded = 0
        self.nbytes = 0
        self._store = {}  # image index -> tuple of per-level features (stored dtype)
        self._levels = None  # (dtypes of the levels, whether the encoder returns a tuple)

    def __len__(self):
        return len(self.data)

    def _encode(self, index):
        out = []
        for idx, x in iter_image_batches(self.data, self.image_size, self.batch_size,
                                         indices=index, device=self.device):
            with torch.no_grad():
                levels, is_tuple = _as_levels(self.encode(x))
            self.n_encoded += len(idx)
            self._levels = (tuple(f.dtype for f in levels), is_tuple)
            if self.dtype is not None:
                # every consumer sees the stored values, whether kept or computed again
                levels = tuple(f.to(self.dtype).to(f.dtype) for f in levels)
            out.append(levels)
        return tuple(torch.cat(parts) for parts in zip(*out))

    def _keep(self, index, levels):
        for row, i in enumerate(index):
            kept = tuple((f[row] if self.dtype is None else f[row].to(self.dtype)).clone()
                         for f in levels)  # clones: not views that pin the whole batch
            size = sum(f.numel() * f.element_size() for f in kept)
            if self.nbytes + size > self.max_bytes:
                return
            self._store[int(i)] = kept
            self.nbytes += size

    def get(self, indices):
        """Features of images ``indices`` (in that order), stacked: ``(len(indices), ...)``.

        A tuple of such tensors, one per level, when the encoder returns a tuple.
        """
        indices = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        missing = list(dict.fromkeys(i for i in indices if i not in self._store))
        fresh = {}
        if missing:
            levels = self._encode(missing)
            self._keep(missing, levels)
            fresh = {i: row for row, i in enumerate(missing)}
            fresh_levels = levels
        dtypes, is_tuple = self._levels
        out = []
        for level, dtype in enumerate(dtypes):
            rows = [fresh_levels[level][fresh[i]] if i in fresh
                    else self._store[i][level].to(dtype) for i in indices]
            out.append(torch.stack(rows))
        return tuple(out) if is_tuple else out[0]

    def batches(self, indices=None):
        """Yield ``(index, features)`` in batches of ``batch_size``, in order.

        Parameters
        ----------
        indices : array-like of int, default=None
            Which images; all of them when None.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        for start in range(0, len(indices), self.batch_size):
            index = indices[start:start + self.batch_size]
            yield index, self.get(index)

    def all(self, indices=None):
        """Features of ``indices`` (all images when None), concatenated (per level)."""
        parts = [f for _, f in self.batches(indices)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(level) for level in zip(*parts))
        return torch.cat(parts)


class FrozenFeatureDetector(BaseDetector):
    """Base of the detectors on frozen backbone features (PatchCore, PaDiM).

    ``fit`` builds the method's :class:`~skad.nn.frozen.FrozenPatchModule`
    (frozen encoder + scoring head, held as ``module_`` and never trained),
    wraps its encoder in a :class:`FeatureCache` over the training images and
    lets the subclass fit the head from the cached features
    (:meth:`_fit_head`): every training image goes through the encoder once
    per fit. ``localize`` upsamples the module's patch-distance map and
    smooths it with a Gaussian (sigma 4 px at 224 px, both papers' setting).
    Subclasses define ``__init__``, :meth:`_build_module` and
    :meth:`_fit_head`, and may use the cache in :meth:`_auto_offset`
    (``self._cache`` exists during ``fit`` only).

    Parameters
    ----------
    backbone : str or torch.nn.Module
    pretrained : bool or path-like
    out_indices : tuple of int
        Backbone levels of the features.
    image_size, batch_size, device, contamination, random_state, verbose
        See :class:`~skad.base.BaseDetector`.
    """

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        **BACKBONE_CONSTRAINTS,
        "out_indices": [tuple, list],
    }

    #: Storage dtype of the training features in the fit's cache (None: as computed).
    _cache_dtype = None

    @abstractmethod
    def _build_module(self, data):
        """Return the method's :class:`~skad.nn.frozen.FrozenPatchModule`."""

    @abstractmethod
    def _fit_head(self, cache, target, generator, masks=None):
        """Fill ``self.module_``'s buffers from the cached training features.

        Parameters
        ----------
        cache : FeatureCache
            ``module_.embed`` of the training images.
        target : ndarray of shape (n,)
            1 for a labelled anomaly, 0 for an unlabelled image.
        generator : torch.Generator
            The fit's source of randomness (CPU).
        masks : tuple (rows, masks) or None, default=None
            The labelled anomalies' defect masks (see :func:`skad._images.check_masks`).

        Returns
        -------
        train_scores : ndarray of shape (n,) or None
            Anomaly scores of the training images as :meth:`score_samples`
            would give them, or None to let the base class score them again.
        """

    def _patch_embedding(self, pool_size):
        """The frozen :class:`~skad.nn.frozen.PatchEmbedding` of ``backbone`` at ``out_indices``."""
        from ..nn.frozen import PatchEmbedding

        extractor = feature_extractor(self.backbone, self.pretrained, tuple(self.out_indices))
        mean, std = input_normalization(extractor)
        return PatchEmbedding(extractor, mean=mean, std=std, pool_size=pool_size)

    def _log(self, message, start):
        if self.verbose:
            print(f"[{type(self).__name__}] {message} ({time.perf_counter() - start:.1f} s)")

    def _fit(self, X, y=None, masks=None):
        try:
            return super()._fit(X, y, masks)
        finally:
            self.__dict__.pop("_cache", None)  # the training features are never pickled

    def _fit_model(self, data, target, *, masks, seed):
        generator = torch.Generator().manual_seed(seed)
        with seeded(seed, self.device_):  # a randomly initialised backbone is seeded too
            module = self._build_module(data).to(memory_format=torch.channels_last)
        self.module_ = module.to(self.device_).eval()
        self._cache = FeatureCache(module.embed, data, image_size=self.image_size,
                                   batch_size=self.batch_size, device=self.device_,
                                   dtype=self._cache_dtype)
        start = time.perf_counter()
        train_scores = self._fit_head(self._cache, target, generator, masks=masks)
        self._log("fitted", start)
        return train_scores

    def _score_features(self, cache, indices=None):
        """Anomaly scores ``(n,)`` float64 of cached features (``module_.score_embedding``)."""
        with torch.no_grad():
            scores = [self.module_.score_embedding(f).score for _, f in cache.batches(indices)]
        return torch.cat(scores).double().cpu().numpy()

    def _anomaly_scores(self, data):
        scores = []
        with torch.no_grad():
            for _, x in iter_image_batches(data, self.image_size, self.batch_size,
                                           device=self.device_):
                scores.append(self.module_(x).score.double().cpu())
        return torch.cat(scores).numpy().reshape(-1)

    def _export_graph(self):
        """The forward graph :func:`skad.export.to_onnx` exports (:mod:`skad.nn.export`).

        Default: ``module_``'s score and its distance map smoothed as
        :meth:`_localize_batch` does, traced as written; PatchCore and PaDiM
        override it with graphs that trace for any batch size.
        """
        from ..nn.export import FrozenPatchGraph

        return FrozenPatchGraph(self.module_, self.image_size, 4.0 * self.image_size / 224)

    def _localize_batch(self, x):
        with torch.no_grad():
            distances = self.module_(x).distances.float()
        return smoothed_map(distances, x.shape[-2:], 4.0 * x.shape[-1] / 224)
