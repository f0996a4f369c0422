"""The skorch side of the trained detectors: a net with a batch hook, balanced batches.

Internal target codes used between sampler, dataset and losses:
``0`` unlabelled (assumed normal), ``1`` labelled anomaly, ``2`` an unlabelled
image chosen to be turned into a pseudo-anomaly by the net's
``batch_transform`` before the forward pass.
"""

import math

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

__all__ = ["PSEUDO", "BalancedBatchSampler", "SkadNet", "TrainingProgress", "balanced_loader"]

PSEUDO = 2


class BalancedBatchSampler(torch.utils.data.Sampler):
    """Batches of unlabelled images and anomalies, half and half by default.

    The unlabelled part walks through a fresh permutation of the unlabelled
    pool each epoch; the anomaly half draws labelled anomalies with
    replacement (oversampling the few), or, when there are none and
    ``pseudo`` is true, unlabelled images tagged to become pseudo-anomalies.
    Pseudo-anomalies are the detector's explicit choice (``pseudo=False`` by
    default): without them and without labelled anomalies, every slot of a
    batch is an unlabelled image. The anomaly part has
    ``max(floor(anomaly_share * batch_size), 1)`` slots (``batch_size // 2``
    for the default share of 1/2; DRA gives a third).

    Parameters
    ----------
    target : array-like of shape (n,)
        Internal targets, 1 = labelled anomaly.
    batch_size : int
        Items per batch, at least 2.
    steps_per_epoch : int or None
        Batches per epoch; ``None`` is one pass over the unlabelled pool.
    pseudo : bool, default=False
        Fill the anomaly half with pseudo-anomaly slots when no anomaly is labelled.
    pseudo_fraction : float in [0, 1]
        Share of the anomaly half given to pseudo-anomalies when anomalies are
        labelled too (0: labelled anomalies only, DevNet's recipe).
    anomaly_share : float in (0, 1), default=0.5
        Share of each batch given to anomalies (labelled or pseudo); at least
        one slot, and at least one slot stays unlabelled.
    generator : torch.Generator
        Source of randomness.
    """

    def __init__(self, target, batch_size, *, steps_per_epoch=None, pseudo=False,
                 pseudo_fraction=0.0, anomaly_share=0.5, generator=None):
        if not 0 < anomaly_share < 1:
            raise ValueError(f"The 'anomaly_share' parameter of BalancedBatchSampler must be "
                             f"a float in (0, 1). Got {anomaly_share!r} instead.")
        target = np.asarray(target)
        self.pseudo_fraction = pseudo_fraction if pseudo else 0.0
        self.unlabelled = np.flatnonzero(target == 0)
        self.anomalies = np.flatnonzero(target == 1)
        self.n_anomalous = 0
        if len(self.anomalies) or pseudo:
            # the epsilon keeps floor(48 * (1/3)) at 16 although 1/3 is stored below a third
            share = math.floor(anomaly_share * batch_size + 1e-9)
            self.n_anomalous = min(max(share, 1), batch_size - 1)
        self.n_unlabelled = batch_size - self.n_anomalous
        if steps_per_epoch is None:
            steps_per_epoch = max(math.ceil(len(self.unlabelled) / self.n_unlabelled), 1)
        self.steps_per_epoch = steps_per_epoch
        self.generator = generator

    def __len__(self):
        return self.steps_per_epoch

    def _draw(self, n, high):
        return torch.randint(high, (n,), generator=self.generator).numpy()

    def __iter__(self):
        n_u = len(self.unlabelled)
        need = self.steps_per_epoch * self.n_unlabelled
        order = torch.cat([
            torch.randperm(n_u, generator=self.generator)
            for _ in range(max(math.ceil(need / n_u), 1))
        ]).numpy()
        for step in range(self.steps_per_epoch):
            chunk = order[step * self.n_unlabelled:(step + 1) * self.n_unlabelled]
            batch = [(int(i), 0) for i in self.unlabelled[chunk]]
            n_pseudo = self.n_anomalous
            if len(self.anomalies):
                n_pseudo = int(round(self.pseudo_fraction * self.n_anomalous))
                picks = self.anomalies[self._draw(self.n_anomalous - n_pseudo,
                                                  len(self.anomalies))]
                batch += [(int(i), 1) for i in picks]
            if n_pseudo:
                picks = self.unlabelled[self._draw(n_pseudo, n_u)]
                batch += [(int(i), PSEUDO) for i in picks]
            yield batch


def balanced_loader(dataset, batch_size, shuffle=True, *, steps_per_epoch=None, pseudo=False,
                    pseudo_fraction=0.0, anomaly_share=0.5, generator=None, collate_fn=None):
    """``iterator_train`` for :class:`SkadNet`: a DataLoader over balanced batches."""
    sampler = BalancedBatchSampler(
        dataset.target.numpy().astype(np.int64), batch_size, steps_per_epoch=steps_per_epoch,
        pseudo=pseudo, pseudo_fraction=pseudo_fraction, anomaly_share=anomaly_share,
        generator=generator,
    )
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)


class SkadNet(NeuralNet):
    """skorch ``NeuralNet`` whose training step can rewrite the batch first.

    Parameters
    ----------
    batch_transform : callable or None
        ``(X, y) -> (X, y)`` on device tensors, applied before each training
        forward pass (pseudo-anomaly synthesis).
    extra_modules : dict of str to torch.nn.Module, default=None
        Modules held beside ``module`` (a frozen teacher beside a trained
        student): each becomes the attribute ``<name>_`` when the net is
        initialised, so skorch moves it to the device, saves it with the net,
        loads it on a CPU-only machine and makes ``<name>__param`` settable.
        A module without trainable parameters stays in evaluation mode during
        training (its BatchNorm statistics never move).

    Notes
    -----
    The optimiser sees only parameters with ``requires_grad``. Everything else
    is skorch's ``NeuralNet``.
    """

    def __init__(self, *args, batch_transform=None, extra_modules=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        self.extra_modules = extra_modules

    def initialize_module(self):
        super().initialize_module()
        for name, module in (self.extra_modules or {}).items():
            setattr(self, f"{name}_", module)  # skorch registers torch modules set here
        return self

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def _set_training(self, training=True):
        super()._set_training(training)
        for name in self.extra_modules or {}:
            module = getattr(self, f"{name}_")
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        Xi = to_tensor(Xi, device=self.device)
        yi = to_tensor(yi, device=self.device)
        if self.batch_transform is not None:
            Xi, yi = self.batch_transform(Xi, yi)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}


class TrainingProgress(Callback):
    """Tells the criterion which fraction of training is done (``criterion_.progress``).

    Objectives that change over training (ADL's burn-in, a second phase) read
    ``progress`` in [0, 1): the share of training batches already run.
    """

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        steps = len(net.get_iterator(net.get_dataset(X), training=True))
        self.total_ = max(net.max_epochs * steps, 1)
        self.done_ = 0

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            net.criterion_.progress = self.done_ / self.total_
            self.done_ += 1
