import copy

import pytest
import torch
from torch import nn

from skad.nn.adl import ADLModule, UpBlock
from skad.nn.backbones import create_feature_extractor


def _extractor(name="test_efficientnet", out_indices=(2, 3, 4)):
    return create_feature_extractor(name, pretrained=False, out_indices=out_indices)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ADLModule(_extractor(), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _check_outputs(out, batch, height, width):
    assert isinstance(out, tuple) and len(out) == 3
    dev, logit, seg = out
    assert dev.shape == (batch,) and logit.shape == (batch,)
    assert seg.shape == (batch, 1, height, width)
    assert all(t.dtype == torch.float32 for t in out)
    assert torch.isfinite(dev).all() and torch.isfinite(logit).all()
    assert torch.isfinite(seg).all()
    assert (dev >= 0).all()


def test_upblock_doubles_size_and_sets_channels():
    block = UpBlock(6, 4)
    out = block(torch.randn(2, 6, 5, 3))
    assert out.shape == (2, 4, 10, 6)
    assert block.conv.bias is None and block.conv.out_channels == 8
    assert isinstance(block.bn, nn.BatchNorm2d) and block.bn.num_features == 8


@pytest.mark.parametrize("size", [(64, 64), (64, 48), (32, 32), (40, 56), (37, 51)])
@pytest.mark.parametrize("training", [True, False])
def test_output_shapes_types_and_modes(net, size, training):
    net.train(training)
    h, w = size
    with torch.no_grad():
        out = net(torch.rand(2, 3, h, w))
    _check_outputs(out, 2, h, w)
    net.eval()


def test_fusion_layout(net):
    # Strides 8/16/32: one UpBlock for level 2, two for level 3, channels kept.
    assert [len(net.up2), len(net.up3)] == [1, 2]
    assert net.fused_channels == sum(net.extractor.channels) == 32 + 48 + 64
    net.eval()
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        levels, fused = net._features(x)
        scores = net.patch_scores(x)
        dev = net(x)[0]
    assert fused.shape == (2, net.fused_channels, 8, 6)
    assert scores.shape == (2, 1, 8, 6) and (scores >= 0).all()
    # The image score is the top-K (10% of 48 cells -> 4) mean of the patch map.
    expected = scores.flatten(1).topk(4, dim=1).values.mean(dim=1)
    torch.testing.assert_close(dev, expected)


def test_resnet18_shapes():
    torch.manual_seed(0)
    net = ADLModule(_extractor("resnet18")).eval()
    assert net.fused_channels == 128 + 256 + 512
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert net._features(x)[1].shape == (1, 896, 8, 8)
    _check_outputs(out, 1, 64, 64)


def test_every_parameter_gets_gradient():
    torch.manual_seed(0)
    net = ADLModule(_extractor()).train()
    dev, logit, seg = net(torch.rand(2, 3, 32, 32))
    (dev.sum() + logit.sum() + seg.sum()).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert no_grad == []


def test_channels_last_matches_contiguous(net):
    x = torch.rand(2, 3, 64, 48)
    net.eval()
    with torch.no_grad():
        ref = net(x)
        cl_net = copy.deepcopy(net).to(memory_format=torch.channels_last).eval()
        out = cl_net(x.contiguous(memory_format=torch.channels_last))
        out_same_net = net(x.contiguous(memory_format=torch.channels_last))
    for a, b, c in zip(ref, out, out_same_net):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)


def test_eval_is_deterministic(net):
    net.eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        first, second = net(x), net(x)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("out_indices", [(3, 4), (1, 2, 3, 4)])
def test_wrong_number_of_levels(out_indices):
    with pytest.raises(ValueError, match=r"extractor.*out_indices"):
        ADLModule(_extractor(out_indices=out_indices))


def test_extractor_returning_wrong_number_of_levels_at_runtime():
    net = ADLModule(_extractor()).eval()
    net.extractor.select = (0, 1)  # now returns two of its three levels
    with pytest.raises(ValueError, match=r"extractor returned 2 .*out_indices"):
        net(torch.rand(1, 3, 32, 32))


def test_extractor_without_metadata():
    with pytest.raises(ValueError, match=r"extractor.*out_indices"):
        ADLModule(nn.Conv2d(3, 8, 3))


@pytest.mark.parametrize(
    "kwargs", [{"top_k": 0}, {"top_k": 1.5}, {"seg_channels": 0}, {"seg_channels": 2.5}]
)
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ADLModule(_extractor(), **kwargs)


def test_non_power_of_two_stride_ratio_is_resized():
    # A hand-made extractor with strides 4, 12 and 24: ratios 3 and 6 are not powers of two
    # (the 64 px probe even reads them as 4, 13 and 32).
    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 4, 4, stride=4)
            self.c2 = nn.Conv2d(4, 6, 3, stride=3)
            self.c3 = nn.Conv2d(6, 8, 2, stride=2)

        def forward(self, x):
            f1 = self.c1(x)
            f2 = self.c2(f1)
            return [f1, f2, self.c3(f2)]

    net = ADLModule(create_feature_extractor(Body(), pretrained=False)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 48, 72))
        assert net._features(torch.rand(1, 3, 48, 72))[1].shape == (1, 18, 12, 18)
    _check_outputs(out, 2, 48, 72)


def test_fuse_channels_reduces_the_upsampled_levels():
    torch.manual_seed(0)
    extractor = create_feature_extractor("test_efficientnet", pretrained=False,
                                         out_indices=(2, 3, 4))
    module = ADLModule(extractor, fuse_channels=8)
    assert module.fused_channels == extractor.channels[0] + 8 + 8
    dev, logit, seg = module(torch.rand(2, 3, 64, 64))
    assert dev.shape == (2,) and seg.shape == (2, 1, 64, 64)
