"""The detector contract shared by every skad estimator.

scikit-learn's outlier-detector contract, exactly as
:class:`~sklearn.ensemble.IsolationForest`: ``score_samples`` is higher for
more normal samples, ``decision_function = score_samples - offset_``,
``predict`` returns -1 (anomaly) or +1 (normal). ``fit(X, y)`` takes y in
predict's codes: -1 for a known anomaly, +1 for an unlabelled sample assumed
normal.

This module is the contract alone: input validation, ``fit`` -> one
:meth:`BaseDetector._fit_model` hook, ``offset_`` from ``contamination``,
scoring and ``localize``. How a method learns lives beneath it, in one of two
styles: :class:`skad.detectors._trained.TrainedDetector` (a skorch net trained
on image batches) and :class:`skad.detectors._frozen.FrozenFeatureDetector`
(a frozen encoder run once per training image, its features cached).
"""

from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._images import (
    ImageInput,
    check_labels,
    check_masks,
    check_tabular,
    is_tabular,
    iter_image_batches,
)
from .nn.anomaly_map import upsample_maps

__all__ = ["BaseDetector"]


class BaseDetector(OutlierMixin, BaseEstimator):
    """Base class of skad's detectors; not meant to be used directly.

    A subclass defines ``__init__`` (keyword-only, storing parameters) and
    implements :meth:`_fit_model`, :meth:`_anomaly_scores` and
    :meth:`_localize_batch`; it may override :meth:`_auto_offset`. The two
    learning styles (``skad.detectors._trained.TrainedDetector`` and
    ``skad.detectors._frozen.FrozenFeatureDetector``) implement all but
    :meth:`_auto_offset` for their methods.

    Parameters
    ----------
    image_size : int
        Images are resized (antialiased) to ``image_size x image_size``.
    batch_size : int
        Images per batch.
    device : {"auto", "cpu", "cuda"} or str
        Where to fit and score; ``"auto"`` picks CUDA when available.
    contamination : "auto" or float in (0, 0.5]
        Sets ``offset_``: with a float, that fraction of the training data
        falls below the threshold; ``"auto"`` uses the method's own threshold.
    random_state : int, RandomState instance or None
        Seeds everything random in ``fit`` (fits are reproducible on CPU).
    verbose : int
        ``0`` silent.
    """

    _parameter_constraints = {
        "image_size": [Interval(Integral, 8, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "device": [str],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: Whether the method also takes tabular data ``(n_samples, n_features)``.
    _accepts_tabular = False

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _fit_model(self, data, target, *, masks, seed):
        """Fit the method's model on validated data; ``device_`` is already set.

        Parameters
        ----------
        data : ImageInput or Tensor
            The training images, or a float32 tensor of rows for tabular data.
        target : ndarray of shape (n,)
            1 for a labelled anomaly, 0 for an unlabelled sample.
        masks : tuple (rows, masks) or None
            The labelled anomalies' defect masks, as
            :func:`skad._images.check_masks` returns them.
        seed : int
            The fit's seed, drawn from ``random_state``.

        Returns
        -------
        train_scores : ndarray of shape (n,) or None
            Anomaly scores of ``data`` when fitting computed them (a float
            ``contamination`` then needs no second pass), else None.
        """

    @abstractmethod
    def _anomaly_scores(self, data):
        """Anomaly scores ``(n,)`` float64 of validated data; higher = more anomalous."""

    @abstractmethod
    def _localize_batch(self, x):
        """Anomaly maps ``(B, S, S)`` for a batch of images ``(B, 3, S, S)`` on ``device_``."""

    def _auto_offset(self, data, target, train_scores):
        """``offset_`` for ``contamination="auto"``, called at the end of ``fit``.

        Parameters
        ----------
        data, target
            As given to :meth:`_fit_model`.
        train_scores : ndarray of shape (n,) or None
            What :meth:`_fit_model` returned.
        """
        return -0.5

    # ---------------------------------------------------------------- helpers
    def _resolve_device(self):
        device = self.device
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" or device.startswith("cuda"):
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(
                    f"device={device!r} but CUDA is not available on this machine; pass "
                    "device='cpu' or device='auto'."
                )
            return device
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}.")

    def _check_input(self, X, *, reset):
        """Validate X; return an :class:`ImageInput` or a float32 tensor of rows."""
        tabular = is_tabular(X)
        if reset and tabular and not self._accepts_tabular and not sp.issparse(X):
            # refused before any fitted attribute is set
            raise ValueError(
                f"X is tabular data of shape {np.shape(X)}, but {type(self).__name__} needs "
                "images (n, H, W[, C]) or image paths. For tabular data use "
                "DeviationNetworkDetector."
            )
        if not reset and self.input_kind_ == "tabular" and not tabular and not isinstance(
            X, (list, tuple)
        ):
            tabular = np.asarray(X).ndim < 2  # let validate_data explain 1-D input
        if reset:
            self.input_kind_ = "tabular" if tabular else "images"
        elif (self.input_kind_ == "tabular") != tabular:
            raise ValueError(
                f"this detector was fitted on {self.input_kind_} but X is "
                f"{'tabular' if tabular else 'images'}; pass data of the kind used in fit."
            )
        if tabular:
            check_tabular(X)
            X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
            return torch.as_tensor(np.asarray(X, dtype=np.float32))
        if reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        return ImageInput(X)

    # ---------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the detector.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C), (n, C, H, W), \
                (n_samples, n_features), or sequence of image paths
            Training data, mostly normal; it may be contaminated by
            unlabelled anomalies.
        y : array-like of shape (n,), default=None
            ``-1`` marks a known anomaly, ``+1`` an unlabelled sample assumed
            normal (predict's codes). ``None`` means no labelled anomaly.

        Returns
        -------
        self : object
            Fitted detector.
        """
        return self._fit(X, y)

    def _fit(self, X, y=None, masks=None):
        """``fit``'s work; ``masks`` (n, H, W) of the labelled anomalies reach the method."""
        data = self._check_input(X, reset=True)
        target = check_labels(y, len(data))
        if masks is not None:
            masks = check_masks(masks, data, target)
        device = self._resolve_device()
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.device_ = device
        train_scores = self._fit_model(data, target, masks=masks, seed=seed)
        if self.contamination == "auto":
            self.offset_ = float(self._auto_offset(data, target, train_scores))
        else:
            if train_scores is None:
                train_scores = self._anomaly_scores(data)
            self.offset_ = float(np.percentile(-train_scores, 100.0 * self.contamination))
        return self

    # --------------------------------------------------------------- scoring
    def score_samples(self, X):
        """Normality score of each sample: higher is more normal.

        The method's anomaly score is ``-score_samples(X)``.

        Parameters
        ----------
        X : array-like or sequence of image paths
            Samples of the kind used in ``fit``.

        Returns
        -------
        scores : ndarray of shape (n,)
        """
        check_is_fitted(self, "offset_")
        return -self._anomaly_scores(self._check_input(X, reset=False))

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for predicted anomalies.

        Parameters
        ----------
        X : array-like or sequence of image paths

        Returns
        -------
        scores : ndarray of shape (n,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """-1 for anomalies, +1 for normal samples.

        Parameters
        ----------
        X : array-like or sequence of image paths

        Returns
        -------
        labels : ndarray of shape (n,), dtype int
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X, y=None):
        """Fit on ``(X, y)`` and predict X; unlike OutlierMixin's default, y is used.

        Parameters
        ----------
        X : array-like or sequence of image paths
        y : array-like of shape (n,), default=None
            -1 known anomaly, +1 unlabelled.

        Returns
        -------
        labels : ndarray of shape (n,)
        """
        return self.fit(X, y).predict(X)

    def localize(self, X):
        """Anomaly maps at the input's resolution: higher is more anomalous.

        Parameters
        ----------
        X : array-like of images or sequence of image paths

        Returns
        -------
        maps : ndarray of shape (n, H, W), dtype float32
            One map per image at its own resolution. Image paths of different
            sizes give a list of ``(H_i, W_i)`` arrays instead.
        """
        check_is_fitted(self, "offset_")
        data = self._check_input(X, reset=False)
        if isinstance(data, torch.Tensor):
            raise ValueError("localize needs images; this detector was fitted on tabular data.")
        maps = []
        for index, x in iter_image_batches(data, self.image_size, self.batch_size,
                                           device=self.device_):
            batch_maps = self._localize_batch(x).detach().float()
            sizes = [data.original_size(i) for i in index]
            if len(set(sizes)) == 1:
                maps.extend(upsample_maps(batch_maps, sizes[0]).cpu().numpy())
                continue
            for m, size in zip(batch_maps, sizes):
                maps.append(upsample_maps(m[None], size)[0].cpu().numpy())
        if len({m.shape for m in maps}) == 1:
            return np.stack(maps).astype(np.float32, copy=False)
        return maps

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
