"""The fit shared by the training-free detectors on frozen backbone features (PatchCore, PaDiM)."""

import time
from abc import abstractmethod

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .._images import is_tabular
from ..base import BaseDetector, _seeded
from ..nn.frozen import PatchEmbedding
from ..nn.saliency import gaussian_blur


def tukey_offset(anomaly_scores):
    """``offset_`` flagging anomaly scores above the upper Tukey fence ``Q3 + 1.5 IQR``."""
    q1, q3 = np.percentile(anomaly_scores, [25.0, 75.0])
    return -float(q3 + 1.5 * (q3 - q1))


class FrozenFeatureDetector(BaseDetector):
    """Base of the training-free detectors on frozen backbone features (PatchCore, PaDiM).

    ``fit`` builds the skorch net around the method's
    :class:`~skad.nn.frozen.FrozenPatchModule` without training it
    (``net_.initialize()``), embeds the training images with the frozen
    backbone and lets the subclass fill the module's buffers
    (:meth:`_fit_module`). Validation, seeding, scoring, batching, devices and
    pickling are :class:`~skad.base.BaseDetector`'s; ``localize`` upsamples
    the module's patch-distance map and smooths it with a Gaussian (sigma 4 px
    at 224 px, both papers' setting). Subclasses define ``__init__``,
    :meth:`_build_module` (usually around :meth:`_patch_embedding`) and
    :meth:`_fit_module`.
    """

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "out_indices": [tuple, list],
    }

    @abstractmethod
    def _fit_module(self, data, target, generator):
        """Fill ``self.net_.module_``'s buffers from the training images.

        Parameters
        ----------
        data : ImageInput
        target : ndarray of shape (n,)
            1 for a labelled anomaly, 0 for an unlabelled image.
        generator : torch.Generator
            The fit's source of randomness (CPU).

        Returns
        -------
        train_scores : ndarray of shape (n,) or None
            Anomaly scores of the training images as :meth:`score_samples`
            would give them, used with a float ``contamination``; None to let
            the base class score the images again.
        auto_scores : ndarray or None
            Anomaly scores that ``contamination="auto"`` thresholds at their
            upper Tukey fence (None with a float ``contamination``).
        """

    def _build_criterion(self, generator):
        return nn.Identity()  # a skorch net needs one; nothing is trained

    def _patch_embedding(self, pool_size):
        """The frozen :class:`~skad.nn.frozen.PatchEmbedding` of ``backbone`` at ``out_indices``."""
        extractor = self._feature_extractor(out_indices=tuple(self.out_indices))
        mean, std = self._normalization(extractor)
        return PatchEmbedding(extractor, mean=mean, std=std, pool_size=pool_size)

    def _log(self, message, start):
        if self.verbose:
            print(f"[{type(self).__name__}] {message} ({time.perf_counter() - start:.1f} s)")

    def _iter_embeddings(self, data, indices=None):
        """Yield ``(index, embedding)`` per batch: the module's features of the images."""
        module = self.net_.module_
        indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        with torch.no_grad():
            for start in range(0, len(indices), self.batch_size):
                index = indices[start:start + self.batch_size]
                x = data.load(index, self.image_size).to(self.device_)
                yield index, module.embed(x)

    def _fit(self, X, y=None, masks=None):
        """Embed the training images and fill the module's buffers; nothing is trained."""
        if is_tabular(X) and not sp.issparse(X):  # before _fit_setup sets fitted attributes
            raise ValueError(
                f"{type(self).__name__} needs images (n, H, W[, C]) or image paths; got "
                f"tabular data of shape {np.shape(X)}. For tabular data use "
                "DeviationNetworkDetector."
            )
        data, target, device, seed = self._fit_setup(X, y)
        generator = torch.Generator().manual_seed(seed)
        with _seeded(seed, device):  # a randomly initialised backbone is seeded too
            module = self._new_module(data)
        net = self._new_net(module, device, criterion=self._build_criterion(generator))
        net.initialize()
        net.module_.eval()
        self.net_ = net
        self.device_ = device
        start = time.perf_counter()
        train_scores, auto_scores = self._fit_module(data, target, generator)
        self._log("fitted", start)
        auto_offset = None if auto_scores is None else tukey_offset(auto_scores)
        self.offset_ = self._fit_offset(data, train_scores, auto_offset)
        return self

    def _localize_batch(self, x):
        with torch.no_grad():
            distances = self.net_.module_(x)[1].float()
        maps = F.interpolate(distances[:, None], size=x.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        return gaussian_blur(maps, 4.0 * x.shape[-1] / 224)
