"""Trained detectors: a skorch net built in ``fit``, trained on image batches."""

import copy
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .._images import ImageBatchDataset, collate_batch
from .._net import SkadNet, balanced_loader
from ..base import BaseDetector
from ..nn.saliency import gradient_saliency
from ._common import BACKBONE_CONSTRAINTS, seeded

__all__ = ["TrainedDetector"]


class TrainedDetector(BaseDetector):
    """Base of the detectors that train a network through skorch (DevNet, ADL, Multi-Cue).

    ``fit`` builds a :class:`skad._net.SkadNet` around the method's module
    and trains it on balanced batches (half unlabelled images, half
    anomalies: labelled ones, and pseudo-anomalies where the method asks for
    them); the net is kept as ``net_``, so skorch's history, callbacks, device
    handling and checkpointing stay reachable. Subclasses define ``__init__``
    and the ``_build_*`` hooks; the defaults of the others are no-ops.

    Parameters
    ----------
    backbone : str or torch.nn.Module
        timm model name or a module (see :func:`skad.nn.backbones.create_feature_extractor`).
    pretrained : bool or path-like
        Pretrained weights: ``True`` (offline ImageNet weights where they can be
        found), ``False`` (random init) or a local weights file.
    max_epochs, lr
        Training schedule.
    optimizer : type
        A :class:`torch.optim.Optimizer` class, built by skorch over the
        trainable parameters with ``lr`` (and the detector's ``weight_decay``).
    callbacks : list of skorch callbacks or None
        Passed to the skorch net (e.g. ``Checkpoint``, ``LRScheduler``,
        ``EarlyStopping(monitor="train_loss")``); copied, never modified.
    image_size, batch_size, device, contamination, random_state, verbose
        See :class:`~skad.base.BaseDetector`; ``batch_size`` is split half
        unlabelled, half anomalies.
    """

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        **BACKBONE_CONSTRAINTS,
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [callable],
        "callbacks": [list, None],
    }

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _build_module(self, data):
        """Return the ``nn.Module``: images in [0, 1] (or rows) -> an output with a ``score``.

        ``data`` is the validated training input: an :class:`~skad._images.ImageInput`,
        or a float32 tensor of rows for tabular data.
        """

    @abstractmethod
    def _build_criterion(self, generator):
        """Return the criterion module ``(outputs, target) -> loss`` (see :mod:`skad.losses`)."""

    def _build_batch_transform(self, generator):
        """Return ``(X, y) -> (X, y)`` applied to each training batch, or None."""
        return None

    def _build_extra_modules(self, data):
        """Modules held beside the trained one, ``{name: module}`` (a frozen teacher, ...).

        Each becomes ``net_.<name>_`` (see :class:`skad._net.SkadNet`).
        """
        return {}

    def _net_params(self):
        """Extra keyword arguments for :class:`skad._net.SkadNet`.

        Batches hold pseudo-anomalies only where the method says so
        (``"iterator_train__pseudo": True``); by default the anomaly half is
        the labelled anomalies alone.
        """
        return {}

    def _sampler_params(self, target):
        """``iterator_train__*`` arguments that depend on the internal targets (1 = anomaly).

        Merged over :meth:`_net_params`.
        """
        return {}

    def _default_callbacks(self):
        """Callbacks the method always uses, as ``(name, callback)`` pairs."""
        return []

    #: Gaussian smoothing of the gradient saliency maps, in pixels at 256 px input.
    _saliency_sigma = 4.0

    def _saliency_cues(self, images):
        """Differentiable cues ``(B,)`` or ``(B, K)`` whose gradients make the saliency maps.

        Default: the network's image score.
        """
        return self.net_.module_(images).score

    def _saliency_layer(self):
        """Module whose activation gradients join the input gradient, or None (input only)."""
        return None

    def _localize_batch(self, x):
        """Default: :func:`skad.nn.saliency.gradient_saliency` of :meth:`_saliency_cues`."""
        self.net_.module_.eval()
        return gradient_saliency(self._saliency_cues, x, layer=self._saliency_layer(),
                                 sigma=self._saliency_sigma * x.shape[-1] / 256)

    # ---------------------------------------------------------------- fitting
    def _dataset(self, data, target, masks=None):
        size = None if isinstance(data, torch.Tensor) else self.image_size
        return ImageBatchDataset(data, target, image_size=size, masks=masks)

    def _fit_model(self, data, target, *, masks, seed):
        device = self.device_
        sampler_rng = torch.Generator().manual_seed(seed + 1)
        device_rng = torch.Generator(device=device).manual_seed(seed + 2)
        with seeded(seed, device):
            module = self._build_module(data)
            if not isinstance(data, torch.Tensor):
                module = module.to(memory_format=torch.channels_last)  # see ImageInput.load
            self.net_ = self._train_net(
                module, self._dataset(data, target, masks), target,
                criterion=self._build_criterion(device_rng),
                batch_transform=self._build_batch_transform(device_rng),
                extra_modules=self._build_extra_modules(data),
                sampler_rng=sampler_rng,
            )
        return None

    def _train_net(self, module, dataset, target, *, criterion, sampler_rng,
                   batch_transform=None, extra_modules=None, **params):
        """Build the :class:`~skad._net.SkadNet` around ``module``, train it on ``dataset``.

        The one place of skad's skorch recipe: balanced batches drawn with
        ``sampler_rng``, the method's default callbacks and the user's
        (copied), ``optimizer`` / ``lr`` / ``max_epochs`` / ``batch_size``,
        no validation split. ``params`` go to the net last (over
        :meth:`_net_params` and :meth:`_sampler_params`). Call it under
        :func:`~skad.detectors._common.seeded`.
        """
        net = self._make_net(module, criterion=criterion, sampler_rng=sampler_rng,
                             batch_transform=batch_transform, extra_modules=extra_modules,
                             **{**self._sampler_params(target), **params})
        net.fit(dataset, y=None)
        return net

    def _make_net(self, module, *, criterion, sampler_rng, batch_transform=None,
                  extra_modules=None, **params):
        """The untrained :class:`~skad._net.SkadNet` of :meth:`_train_net`.

        Also how :mod:`skad.persistence` rebuilds a saved net before it loads
        the saved weights into it.
        """
        callbacks = self._default_callbacks() + copy.deepcopy(list(self.callbacks or []))
        if self.verbose:
            from skorch.callbacks import ProgressBar

            callbacks.append(("progress_bar", ProgressBar(batches_per_epoch="count")))
        return SkadNet(
            module,
            criterion=criterion,
            batch_transform=batch_transform,
            extra_modules=extra_modules,
            optimizer=self.optimizer,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            iterator_train=balanced_loader,
            iterator_train__generator=sampler_rng,
            iterator_train__collate_fn=collate_batch,
            iterator_valid__collate_fn=collate_batch,
            train_split=None,
            device=self.device_,
            callbacks=callbacks,
            verbose=int(self.verbose),
            **{**self._net_params(), **params},
        )

    @property
    def history_(self):
        """skorch's training history of the fitted net."""
        check_is_fitted(self, "net_")
        return self.net_.history

    # --------------------------------------------------------------- scoring
    def _module_outputs(self, data):
        """Yield the module's outputs (on ``device_``) batch by batch, in evaluation mode."""
        dataset = self._dataset(data, np.zeros(len(data)))
        with torch.no_grad():
            # device=None: skorch's to_device would rebuild the named tuples as plain ones
            yield from self.net_.forward_iter(dataset, training=False, device=None)

    def _anomaly_scores(self, data):
        scores = [out.score.detach().cpu() for out in self._module_outputs(data)]
        return torch.cat(scores).double().numpy().reshape(-1)

    # ---------------------------------------------------------------- export
    def _export_graph(self):
        """The forward graph :func:`skad.export.to_onnx` exports (:mod:`skad.nn.export`).

        Default: the module's ``score``, as :meth:`_anomaly_scores`; no map, since
        the default maps are gradient saliency (a backward pass). A subclass that
        scores or localises otherwise overrides this too.
        """
        from ..nn.export import ScoreGraph

        return ScoreGraph(self.net_.module_)
