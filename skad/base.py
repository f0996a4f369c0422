"""The detector contract shared by every skad estimator.

scikit-learn's outlier-detector contract, exactly as
:class:`~sklearn.ensemble.IsolationForest`: ``score_samples`` is higher for
more normal samples, ``decision_function = score_samples - offset_``,
``predict`` returns -1 (anomaly) or +1 (normal). ``fit(X, y)`` takes y in
predict's codes: -1 for a known anomaly, +1 for an unlabelled sample assumed
normal.

A detector *holds* a skorch net (``net_``) built in ``fit``; subclasses say
which module, criterion and batch hook to use through a handful of
``_build_*`` methods.
"""

import contextlib
import copy
import os
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._images import (
    ImageBatchDataset,
    ImageInput,
    check_labels,
    check_masks,
    collate_batch,
    is_tabular,
)
from ._net import SkadNet, balanced_loader
from .nn.backbones import IMAGENET_MEAN, IMAGENET_STD, create_feature_extractor
from .nn.saliency import gradient_saliency

__all__ = ["BaseDetector"]


@contextlib.contextmanager
def _seeded(seed, device):
    """Seed torch's global generators (CPU, and ``device``'s if CUDA) for a block, then restore."""
    cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


class BaseDetector(OutlierMixin, BaseEstimator):
    """Base class of skad's detectors; not meant to be used directly.

    Subclasses define ``__init__`` (keyword-only, storing parameters) and
    implement :meth:`_build_module`, :meth:`_build_criterion` and optionally
    :meth:`_build_batch_transform`, :meth:`_sampler_params`, :meth:`_calibrate`,
    :meth:`_auto_offset` and the localisation hooks (:meth:`_localize_batch`, or the gradient
    saliency's :meth:`_saliency_cues` and :meth:`_saliency_layer`).

    Parameters
    ----------
    backbone : str or torch.nn.Module
        timm model name or a module (see :func:`skad.nn.backbones.create_feature_extractor`).
    pretrained : bool or path-like
        Pretrained weights: ``True`` (offline ImageNet weights where they can be
        found), ``False`` (random init) or a local weights file.
    image_size : int
        Images are resized (antialiased) to ``image_size x image_size``.
    max_epochs, batch_size, lr
        Training schedule; ``batch_size`` is split half unlabelled, half anomalies.
    device : {"auto", "cpu", "cuda"} or str
        Where to train and score; ``"auto"`` picks CUDA when available.
    contamination : "auto" or float in (0, 0.5]
        Sets ``offset_``: with a float, that fraction of the training data
        falls below the threshold; ``"auto"`` uses the method's own threshold.
    random_state : int, RandomState instance or None
        Seeds weight init, batch sampling and synthesis (fits are reproducible on CPU).
    verbose : int
        ``0`` silent; ``>= 1`` a progress bar and per-epoch losses.
    callbacks : list of skorch callbacks or None
        Passed to the skorch net (e.g. ``Checkpoint``, ``LRScheduler``,
        ``EarlyStopping(monitor="train_loss")``); copied, never modified.
    """

    _parameter_constraints = {
        "backbone": [str, nn.Module],
        "pretrained": ["boolean", str, os.PathLike],
        "image_size": [Interval(Integral, 8, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "device": [str],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
    }

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _build_module(self, data):
        """Return the ``nn.Module``: images in [0, 1] (or rows) -> anomaly scores ``(B,)``.

        ``data`` is the validated training input: an :class:`ImageInput`, or a
        float32 tensor of rows for tabular data.
        """

    @abstractmethod
    def _build_criterion(self, generator):
        """Return the criterion module ``(y_pred, target) -> loss``."""

    def _build_batch_transform(self, generator):
        """Return ``(X, y) -> (X, y)`` applied to each training batch, or None."""
        return None

    def _net_params(self):
        """Extra keyword arguments for :class:`skad._net.SkadNet`."""
        return {}

    def _sampler_params(self, target):
        """``iterator_train__*`` arguments that depend on the internal targets (1 = anomaly).

        Merged over :meth:`_net_params`.
        """
        return {}

    def _default_callbacks(self):
        """Callbacks the method always uses, as ``(name, callback)`` pairs."""
        return []

    def _calibrate(self, data, target):
        """Set fitted score statistics after training, before ``offset_`` (default: none).

        Parameters
        ----------
        data : ImageInput or Tensor
            The training data.
        target : ndarray of shape (n,)
            1 for a labelled anomaly, 0 for an unlabelled sample.

        Returns
        -------
        train_scores : ndarray of shape (n,) or None
            Anomaly scores of ``data`` when calibrating computed them (a float
            ``contamination`` then needs no second pass), else None.
        """

    def _auto_offset(self):
        """``offset_`` for ``contamination="auto"``."""
        return -0.5

    #: Gaussian smoothing of the gradient saliency maps, in pixels at 256 px input.
    _saliency_sigma = 4.0

    def _saliency_cues(self, images):
        """Differentiable cues ``(B,)`` or ``(B, K)`` whose gradients make the saliency maps.

        Default: the network's image score (its first output for multi-head modules).
        """
        out = self.net_.module_(images)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _saliency_layer(self):
        """Module whose activation gradients join the input gradient, or None (input only)."""
        return None

    def _localize_batch(self, x):
        """Anomaly maps ``(B, S, S)`` for a batch of images ``(B, 3, S, S)``.

        Default: :func:`skad.nn.saliency.gradient_saliency` of
        :meth:`_saliency_cues`, with :meth:`_saliency_layer`'s activation.
        """
        return gradient_saliency(self._saliency_cues, x, layer=self._saliency_layer(),
                                 sigma=self._saliency_sigma * x.shape[-1] / 256)

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

    def _feature_extractor(self, out_indices=(-1,)):
        """The backbone as a :class:`~skad.nn.backbones.FeatureExtractor`."""
        backbone = self.backbone
        if isinstance(backbone, nn.Module):
            backbone = copy.deepcopy(backbone)  # never train the caller's module
        return create_feature_extractor(
            backbone, pretrained=self.pretrained, out_indices=out_indices
        )

    @staticmethod
    def _normalization(extractor):
        """ImageNet statistics for pretrained backbones, identity otherwise."""
        if getattr(extractor, "pretrained", False):
            return IMAGENET_MEAN, IMAGENET_STD
        return None, None

    def _check_input(self, X, *, reset):
        """Validate X; return an :class:`ImageInput` or a float32 tensor of rows."""
        tabular = is_tabular(X)
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
            X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
            return torch.as_tensor(np.asarray(X, dtype=np.float32))
        if reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        return ImageInput(X)

    def _dataset(self, data, target, masks=None):
        size = None if isinstance(data, torch.Tensor) else self.image_size
        return ImageBatchDataset(data, target, image_size=size, masks=masks)

    def _anomaly_scores(self, data):
        dataset = self._dataset(data, np.zeros(len(data)))
        scores = []
        with torch.no_grad():
            for out in self.net_.forward_iter(dataset, training=False, device="cpu"):
                # multi-head modules return a tuple whose first element is the image score
                scores.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.cat(scores).double().numpy().reshape(-1)

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
        """``fit``'s work; ``masks`` (n, H, W) of the labelled anomalies reach the batch hook."""
        data, target, device, seed = self._fit_setup(X, y)
        if masks is not None:
            masks = check_masks(masks, data, target)
        sampler_rng = torch.Generator().manual_seed(seed + 1)
        device_rng = torch.Generator(device=device).manual_seed(seed + 2)
        with _seeded(seed, device):
            callbacks = self._default_callbacks() + copy.deepcopy(list(self.callbacks or []))
            if self.verbose:
                from skorch.callbacks import ProgressBar

                callbacks.append(("progress_bar", ProgressBar(batches_per_epoch="count")))
            module = self._new_module(data)
            net = self._new_net(
                module,
                device,
                criterion=self._build_criterion(device_rng),
                batch_transform=self._build_batch_transform(device_rng),
                optimizer=torch.optim.Adam,
                lr=self.lr,
                max_epochs=self.max_epochs,
                iterator_train=balanced_loader,
                iterator_train__generator=sampler_rng,
                iterator_train__collate_fn=collate_batch,
                callbacks=callbacks,
                verbose=int(self.verbose),
                **{**self._net_params(), **self._sampler_params(target)},
            )
            net.fit(self._dataset(data, target, masks), y=None)
        self.net_ = net
        self.device_ = device
        train_scores = self._calibrate(data, target)
        self.offset_ = self._fit_offset(data, train_scores)
        return self

    def _fit_setup(self, X, y):
        """Validate the training data; returns ``(data, target, device, seed)``.

        ``target`` holds 1 for a labelled anomaly, 0 otherwise; ``seed`` is the
        fit's integer seed, drawn from ``random_state``.
        """
        data = self._check_input(X, reset=True)
        target = check_labels(y, len(data))
        device = self._resolve_device()
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        return data, target, device, seed

    def _new_module(self, data):
        """:meth:`_build_module`, channels-last for images (see ``ImageInput.load``)."""
        module = self._build_module(data)
        if not isinstance(data, torch.Tensor):
            module = module.to(memory_format=torch.channels_last)
        return module

    def _new_net(self, module, device, **params):
        """The skorch net around ``module``: batching, collation and device, plus ``params``."""
        return SkadNet(
            module,
            batch_size=self.batch_size,
            iterator_valid__collate_fn=collate_batch,
            train_split=None,
            device=device,
            **params,
        )

    def _fit_offset(self, data, train_scores=None, auto_offset=None):
        """``offset_``: ``contamination`` quantile of the training scores, or the auto offset.

        ``train_scores`` (anomaly scores of ``data``) are computed when not
        given; ``auto_offset`` defaults to :meth:`_auto_offset`.
        """
        if self.contamination == "auto":
            return float(self._auto_offset() if auto_offset is None else auto_offset)
        if train_scores is None:
            train_scores = self._anomaly_scores(data)
        return float(np.percentile(-train_scores, 100.0 * self.contamination))

    @property
    def history_(self):
        """skorch's training history of the fitted net."""
        check_is_fitted(self, "net_")
        return self.net_.history

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
        check_is_fitted(self, "net_")
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
        check_is_fitted(self, "net_")
        data = self._check_input(X, reset=False)
        if isinstance(data, torch.Tensor):
            raise ValueError("localize needs images; this detector was fitted on tabular data.")
        module = self.net_.module_
        module.eval()
        maps = []
        for start in range(0, len(data), self.batch_size):
            index = list(range(start, min(start + self.batch_size, len(data))))
            x = data.load(index, self.image_size).to(self.device_)
            batch_maps = self._localize_batch(x).detach()[:, None].float()
            sizes = [data.original_size(i) for i in index]
            if len(set(sizes)) == 1:
                batch_maps = F.interpolate(batch_maps, size=sizes[0], mode="bilinear",
                                           align_corners=False)
                maps.extend(batch_maps[:, 0].cpu().numpy())
                continue
            for m, size in zip(batch_maps, sizes):
                m = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)
                maps.append(m[0, 0].cpu().numpy())
        if len({m.shape for m in maps}) == 1:
            return np.stack(maps).astype(np.float32, copy=False)
        return maps

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
