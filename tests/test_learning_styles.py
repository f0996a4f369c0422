"""The two learning styles beneath the contract: trained (skorch) and frozen-feature (cache)."""

import pickle
from typing import NamedTuple

import numpy as np
import pytest
import torch
from _helpers import make_tiny_images
from torch import nn

import skad.nn.frozen
from skad import PaDiMDetector, PatchCoreDetector
from skad._images import ImageInput
from skad.detectors._frozen import FeatureCache
from skad.detectors._trained import TrainedDetector

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, batch_size=8,
            device="cpu", random_state=0)


# ------------------------------------------------------------------ feature cache


def _encoder():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2).eval()
    return lambda x: conv(x)


@pytest.fixture
def images():
    X, _, _ = make_tiny_images(n_normal=10, n_anomalous=3, size=16, seed=1)
    return ImageInput(X)


def test_cache_encodes_each_image_once(images):
    encode = _encoder()
    cache = FeatureCache(encode, images, image_size=16, batch_size=4, device="cpu")
    first = cache.all()
    with torch.no_grad():
        direct = encode(images.load(range(len(images)), 16))
    torch.testing.assert_close(first, direct)
    assert cache.n_encoded == len(images)
    torch.testing.assert_close(cache.get([5, 1, 5]), direct[[5, 1, 5]])
    list(cache.batches([0, 2, 4]))
    assert cache.n_encoded == len(images)  # everything came from the cache


def test_cache_over_its_bound_recomputes_and_gives_the_same_features(images):
    encode = _encoder()
    unbounded = FeatureCache(encode, images, image_size=16, batch_size=4, device="cpu").all()
    one_image = unbounded[0].numel() * unbounded.element_size()
    cache = FeatureCache(encode, images, image_size=16, batch_size=4, device="cpu",
                         max_bytes=3 * one_image)
    torch.testing.assert_close(cache.all(), unbounded)
    torch.testing.assert_close(cache.all(), unbounded)
    # three images kept, the other ten encoded twice
    assert cache.n_encoded == len(images) + (len(images) - 3)


def test_float16_storage_returns_the_encoders_dtype(images):
    encode = _encoder()
    exact = FeatureCache(encode, images, image_size=16, batch_size=4, device="cpu").all()
    cache = FeatureCache(encode, images, image_size=16, batch_size=4, device="cpu",
                         dtype=torch.float16)
    first = cache.all()
    again = cache.all()  # from the float16 store
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, exact, rtol=2e-3, atol=2e-3)
    assert not torch.equal(again, exact)
    assert torch.equal(first, again)  # the same values, computed or kept


def test_cache_of_a_multi_level_encoder_keeps_the_levels(images):
    conv = _encoder()
    cache = FeatureCache(lambda x: (conv(x), x[:, :1, ::4, ::4]), images, image_size=16,
                         batch_size=5, device="cpu", dtype=torch.float16)
    a, b = cache.all()
    assert a.shape == (13, 4, 7, 7) and b.shape == (13, 1, 4, 4)
    a2, b2 = cache.get(np.arange(13)[::-1])
    torch.testing.assert_close(a2, a.flip(0))
    torch.testing.assert_close(b2, b.flip(0))
    assert cache.n_encoded == 13 and a2.dtype == torch.float32
    assert cache.nbytes == 13 * (4 * 7 * 7 + 16) * 2  # float16 storage


@pytest.mark.parametrize("contamination", ["auto", 0.1])
@pytest.mark.parametrize("make", [
    lambda **kw: PatchCoreDetector(**TINY, coreset_ratio=0.5, **kw),
    lambda **kw: PatchCoreDetector(**TINY, coreset_ratio=0.5, prune_with_labels=True, **kw),
    lambda **kw: PaDiMDetector(**TINY, n_features=16, **kw),
], ids=["patchcore", "patchcore-pruned", "padim"])
def test_training_free_fit_runs_the_encoder_once_per_image(monkeypatch, make, contamination):
    X, is_anomaly, _ = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    y = np.where(is_anomaly, -1, 1)
    seen = []
    forward = skad.nn.frozen.PatchEmbedding.forward

    def counting(self, x, *args, **kwargs):
        seen.append(len(x))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(skad.nn.frozen.PatchEmbedding, "forward", counting)
    det = make(contamination=contamination).fit(X, y)
    assert sum(seen) == len(X)
    assert not hasattr(det, "_cache")  # the training features are not kept (nor pickled)


@pytest.mark.parametrize("cls", [PatchCoreDetector, PaDiMDetector])
def test_training_free_detectors_have_no_training_parameters(cls):
    params = cls().get_params()
    assert not {"max_epochs", "lr", "optimizer", "callbacks", "steps_per_epoch"} & set(params)


# --------------------------------------------------- trained detector with two modules


class _Output(NamedTuple):
    score: torch.Tensor
    features: torch.Tensor


class _Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        return _Output(f.abs().mean(dim=(1, 2, 3)), f)


class _Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.requires_grad_(False)

    def forward(self, x):
        return self.norm(self.conv(x))


class _DistillationLoss(nn.Module):
    def forward(self, outputs, target):
        return ((outputs.features - target) ** 2).mean()


class _Teach:
    """Batch hook: the teacher's features of the clean batch are the student's target."""

    def __init__(self, teacher):
        self.teacher = teacher

    def __call__(self, X, y):
        with torch.no_grad():
            return X, self.teacher(X)


class Distiller(TrainedDetector):
    """A toy student trained to copy a frozen teacher held beside it in the skorch net."""

    def __init__(self, *, image_size=16, batch_size=4, max_epochs=3, lr=0.1,
                 optimizer=torch.optim.SGD, device="cpu", contamination="auto",
                 random_state=0, verbose=0, callbacks=None, backbone="none", pretrained=False):
        self.image_size = image_size
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.contamination = contamination
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.backbone = backbone
        self.pretrained = pretrained

    def _build_module(self, data):
        return _Student()

    def _build_extra_modules(self, data):
        return {"teacher": self._teacher}

    def _build_criterion(self, generator):
        return _DistillationLoss()

    def _build_batch_transform(self, generator):
        self._teacher = _Teacher()
        return _Teach(self._teacher)


def test_a_frozen_teacher_beside_a_trained_student():
    X, _, _ = make_tiny_images(n_normal=12, n_anomalous=0, size=16, seed=2)
    det = Distiller().fit(X)
    net = det.net_
    teacher = net.teacher_
    assert isinstance(teacher, _Teacher) and "teacher" in net._modules
    # skorch knows it: it is moved to the device and restored on CPU-only machines
    assert "teacher_" in net.cuda_dependent_attributes_
    # the optimiser holds the student's parameters only
    optimised = {id(p) for group in net.optimizer_.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in net.module_.parameters()}
    # frozen: kept in evaluation mode while the student trained, statistics never moved
    assert not teacher.training and teacher.conv.weight.grad is None
    torch.testing.assert_close(teacher.norm.running_mean, torch.zeros(4))
    torch.testing.assert_close(teacher.norm.running_var, torch.ones(4))
    losses = det.history_[:, "train_loss"]
    assert losses[-1] < losses[0]  # the student learns to copy
    twin = pickle.loads(pickle.dumps(det))
    torch.testing.assert_close(twin.net_.teacher_.conv.weight, teacher.conv.weight)


def test_optimizer_is_a_parameter_of_trained_detectors():
    from skad import AdaptiveDeviationDetector, DeviationNetworkDetector, MultiCueDetector

    for cls in (AdaptiveDeviationDetector, DeviationNetworkDetector, MultiCueDetector):
        assert cls().get_params()["optimizer"] is torch.optim.Adam
    X, is_anomaly, _ = make_tiny_images(n_normal=12, n_anomalous=2, size=32, seed=3)
    y = np.where(is_anomaly, -1, 1)
    det = DeviationNetworkDetector(**TINY, max_epochs=1, optimizer=torch.optim.SGD).fit(X, y)
    assert type(det.net_.optimizer_) is torch.optim.SGD
    assert det.net_.optimizer_.defaults["weight_decay"] == det.weight_decay
