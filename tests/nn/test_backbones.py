import os

import pytest
import timm
import torch
from torch import nn

from skad.nn import backbones
from skad.nn.backbones import (
    FeatureExtractor,
    PretrainedWeightsNotFoundError,
    create_feature_extractor,
    load_efficientnet_lite0_state_dict,
)


def _shapes(extractor, size=64):
    with torch.no_grad():
        return [tuple(f.shape) for f in extractor(torch.zeros(2, 3, size, size))]


@pytest.fixture
def no_timm_pretrained(monkeypatch, tmp_path):
    """Make timm's pretrained download fail and torch's hub cache empty, without any network."""
    original = timm.create_model

    def create_model(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("offline (test)")
        return original(*args, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_efficientnet_lite0_all_levels():
    fx = create_feature_extractor(pretrained=False)
    assert isinstance(fx, FeatureExtractor)
    assert fx.pretrained is False
    assert fx.channels == [16, 24, 40, 112, 320]
    assert fx.reductions == [2, 4, 8, 16, 32]
    assert _shapes(fx) == [(2, c, 64 // r, 64 // r) for c, r in zip(fx.channels, fx.reductions)]


@pytest.mark.parametrize(
    "name, out_indices, channels, reductions",
    [
        ("efficientnet_lite0", (1, -1), [24, 320], [4, 32]),
        ("efficientnet_lite0", [2], [40], [8]),
        ("resnet18", (2, 1), [64, 128], [4, 8]),
        ("resnet18", (-1,), [512], [32]),
    ],
)
def test_out_indices_select_levels_finest_first(name, out_indices, channels, reductions):
    fx = create_feature_extractor(name, pretrained=False, out_indices=out_indices)
    assert fx.channels == channels
    assert fx.reductions == reductions
    assert _shapes(fx, 32) == [(2, c, 32 // r, 32 // r) for c, r in zip(channels, reductions)]


@pytest.mark.parametrize("name, out_indices", [("efficientnet_lite0", (0, 2)), ("resnet18", (1,))])
def test_every_parameter_of_selected_levels_gets_gradient(name, out_indices):
    fx = create_feature_extractor(name, pretrained=False, out_indices=out_indices).train()
    sum(f.square().mean() for f in fx(torch.randn(2, 3, 32, 32))).backward()
    # Only None counts: timm zero-initialises the last BatchNorm of residual blocks, which
    # legitimately zeroes some gradients at random init.
    no_grad = [n for n, p in fx.named_parameters() if p.grad is None]
    assert no_grad == []


def test_module_returning_tensor_and_training_modes_restored():
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    body.train()
    body[1].eval()  # a frozen BatchNorm must stay frozen after probing
    fx = create_feature_extractor(body, pretrained=False)
    assert fx.channels == [8] and fx.reductions == [2]
    assert body.training and body[0].training and not body[1].training
    assert _shapes(fx, 32) == [(2, 8, 16, 16)]


class _TwoLevels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=4, padding=1)

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def test_module_returning_list():
    fx = create_feature_extractor(_TwoLevels(), pretrained=False)
    assert fx.channels == [4, 6] and fx.reductions == [2, 8]
    assert _shapes(fx) == [(2, 4, 32, 32), (2, 6, 8, 8)]
    deepest = create_feature_extractor(_TwoLevels(), pretrained=True, out_indices=(-1,))
    assert deepest.channels == [6] and deepest.reductions == [8] and deepest.pretrained
    assert _shapes(deepest) == [(2, 6, 8, 8)]


def test_timm_features_module_uses_feature_info():
    body = timm.create_model("resnet18", features_only=True, out_indices=(1, 2))
    fx = create_feature_extractor(body, pretrained=False, out_indices=(1,))
    assert fx.channels == [128] and fx.reductions == [8]
    assert _shapes(fx, 32) == [(2, 128, 4, 4)]


@pytest.mark.parametrize("backbone", ["not_a_model_xyz", 3])
def test_invalid_backbone(backbone):
    with pytest.raises(ValueError, match=r"backbone=.*timm\.list_models\(\)"):
        create_feature_extractor(backbone, pretrained=False)


def test_module_with_bad_output():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        create_feature_extractor(nn.Flatten(), pretrained=False)


@pytest.mark.parametrize("out_indices", [(5,), (-6,), (0, 0), (), 1, ("a",), (True,)])
def test_invalid_out_indices(out_indices):
    with pytest.raises(ValueError, match="out_indices"):
        create_feature_extractor("resnet18", pretrained=False, out_indices=out_indices)
    with pytest.raises(ValueError, match="out_indices"):
        create_feature_extractor(_TwoLevels(), pretrained=False, out_indices=out_indices)


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_weights_file_is_loaded(tmp_path, wrap):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    fx = create_feature_extractor("resnet18", pretrained=path, out_indices=(0, 1))
    assert fx.pretrained is True
    loaded = fx.body.state_dict()
    assert loaded and all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained="):
        create_feature_extractor("resnet18", pretrained=tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="pretrained="):
        create_feature_extractor("resnet18", pretrained=1.0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"lack 1 tensors.*layer1\.0\.conv1\.weight"):
        create_feature_extractor("resnet18", pretrained=tmp_path / "partial.pth")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unexpected keys.*extra.weight"):
        create_feature_extractor("resnet18", pretrained=tmp_path / "other.pth")


def test_resnet18_unavailable_offline(no_timm_pretrained):
    msg = r"offline for 'resnet18'.*pretrained=False.*efficientnet_lite0.*pretrained='/path"
    with pytest.raises(PretrainedWeightsNotFoundError, match=msg) as info:
        create_feature_extractor("resnet18", pretrained=True)
    assert isinstance(info.value, RuntimeError)


def test_resnet18_from_torchvision_cache(no_timm_pretrained):
    from torchvision.models import ResNet18_Weights

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = no_timm_pretrained / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    fx = create_feature_extractor("resnet18", pretrained=True, out_indices=(0,))
    assert fx.pretrained is True
    assert all(torch.equal(v, state[k]) for k, v in fx.body.state_dict().items())


def test_embedded_efficientnet_lite0_weights():
    fx = create_feature_extractor(out_indices=(1, 3)).eval()
    assert fx.pretrained is True
    embedded = load_efficientnet_lite0_state_dict()
    random = create_feature_extractor(pretrained=False, out_indices=(1, 3)).state_dict()
    loaded = fx.state_dict()
    assert loaded.keys() == random.keys()
    for key, value in loaded.items():
        assert torch.equal(value, embedded[key.removeprefix("body.")])
    weights = [k for k in loaded if k.endswith("conv.weight") or k.endswith("conv_dw.weight")]
    assert weights and not any(torch.equal(loaded[k], random[k]) for k in weights)
    with torch.no_grad():
        features = fx(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [24, 112]
    assert all(torch.isfinite(f).all() for f in features)


def test_embedded_weights_checked_against_timm(monkeypatch):
    # Simulates a timm release whose efficientnet_lite0 no longer matches the shipped file.
    other = backbones._meta_model("efficientnet_lite1")
    monkeypatch.setattr(backbones, "_meta_model", lambda name, **kwargs: other)
    with pytest.raises(RuntimeError, match="pretrained=False"):
        load_efficientnet_lite0_state_dict()
