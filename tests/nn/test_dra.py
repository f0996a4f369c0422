"""DRA's network: the four heads, the reference set, scales and BatchNorm modes."""

import pytest
import torch
import torch.nn.functional as F

from skad.nn.backbones import create_feature_extractor
from skad.nn.dra import HEADS, DRAModule, NormalityHead, ResidualHead
from skad.nn.heads import rescale_images, topk_mean
from skad.nn.outputs import DRAOutput

SIZE = 64  # test_efficientnet's last level: 64 channels, 2x2 at 64 px, 1x1 at half scale


def _module(heads=HEADS, n_reference=3, **kw):
    torch.manual_seed(0)
    extractor = create_feature_extractor("test_efficientnet", pretrained=False, out_indices=(-1,))
    net = DRAModule(extractor, heads=heads, n_reference=n_reference, image_size=SIZE, **kw)
    net.set_reference(torch.rand(n_reference, 3, SIZE, SIZE,
                                 generator=torch.Generator().manual_seed(1)))
    return net


@pytest.fixture(scope="module")
def net():
    return _module(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _images(n, seed=2):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("training", [True, False])
def test_outputs_are_named_scores_of_every_head(net, training):
    net.train(training)
    with torch.no_grad():
        out = net(_images(4))
    net.eval()
    assert isinstance(out, DRAOutput) and out._fields == ("score", *HEADS)
    for name in HEADS:
        scores = getattr(out, name)
        assert scores.shape == (4,) and torch.isfinite(scores).all() and (scores >= 0).all()
    torch.testing.assert_close(out.score, out.seen + out.pseudo + out.residual - out.normality)


def test_heads_follow_their_definitions(net):
    # each head recomputed by hand from the backbone's last map at both scales
    net.eval()
    x = _images(3)
    with torch.no_grad():
        out = net(x)
        expected = dict.fromkeys(HEADS, 0.0)
        for scale in net.scales:
            xs, refs = (rescale_images(net.normalize(t), scale) for t in (x, net.reference_images))
            m_x = net.extractor(xs)[-1]
            m_r = net.extractor(refs)[-1].mean(dim=0, keepdim=True)
            for name in ("seen", "pseudo"):
                conv = net.heads[name].conv
                expected[name] += topk_mean(conv(m_x).abs(), 0.1)
            head = net.heads["residual"]
            hidden = F.relu(head.bn(head.conv(m_r - m_x)))
            expected["residual"] += topk_mean(head.head.conv(hidden).abs(), 0.1)
            mlp = net.heads["normality"].net
            expected["normality"] += mlp(m_x.mean(dim=(2, 3))).squeeze(1).abs()
    for name in HEADS:
        torch.testing.assert_close(getattr(out, name), expected[name] / 2, rtol=1e-5, atol=1e-6)


def test_only_the_residual_head_sees_the_references(net):
    net.eval()
    x = _images(2)
    with torch.no_grad():
        before = net(x)
        saved = net.reference_images.clone()
        net.set_reference(_images(3, seed=9))
        after = net(x)
        net.set_reference(saved)
    for name in ("seen", "pseudo", "normality"):
        assert torch.equal(getattr(before, name), getattr(after, name))
    assert not torch.allclose(before.residual, after.residual)


@pytest.mark.parametrize("fixed", [False, True])
def test_evaluation_scores_do_not_depend_on_the_batch(net, fixed):
    net.eval()
    x = _images(5)
    with torch.no_grad(), (net.fixed_reference() if fixed else torch.enable_grad()):
        together = net(x)
        alone = [net(x[i:i + 1]) for i in range(5)]
    for name in DRAOutput._fields:
        torch.testing.assert_close(torch.cat([getattr(o, name) for o in alone]),
                                   getattr(together, name), rtol=1e-5, atol=1e-6)


def test_fixed_reference_equals_the_live_reference_pass(net):
    net.eval()
    x = _images(3)
    with torch.no_grad():
        live = net(x)
        with net.fixed_reference():
            held = net(x)
    assert net._held is None  # released after the block
    for name in DRAOutput._fields:
        torch.testing.assert_close(getattr(held, name), getattr(live, name), rtol=1e-5,
                                   atol=1e-6)


def test_reference_maps_are_eval_mode_and_restore_every_flag():
    net = _module().train()
    net.extractor.eval()  # a caller's mixed modes survive
    maps = net.reference_maps()
    assert net.training and not net.extractor.training and net.heads.training
    assert [tuple(m.shape) for m in maps] == [(1, 64, 2, 2), (1, 64, 1, 1)]
    assert not any(m.requires_grad for m in maps)
    net.eval()
    with torch.no_grad():
        refs = net.normalize(net.reference_images)
        torch.testing.assert_close(maps[0], net.extractor(refs)[-1].mean(0, keepdim=True))


def test_training_pass_normalises_batch_and_references_together():
    # one backbone pass per scale over batch + references: BatchNorm's running statistics
    # move once per scale and step, and every parameter gets a gradient (references too)
    net = _module().train()
    bn = next(m for m in net.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = int(bn.num_batches_tracked)
    out = net(_images(4))
    assert int(bn.num_batches_tracked) == before + len(net.scales)
    sum((getattr(out, h) ** 2).sum() for h in HEADS).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_reference_features_carry_gradient_in_training():
    net = _module(heads=("residual",)).train()
    refs = net.reference_images.clone().requires_grad_(True)
    net.reference_images = refs
    net(_images(2)).score.sum().backward()
    assert refs.grad is not None and refs.grad.abs().sum() > 0


@pytest.mark.parametrize("heads", [("seen",), ("seen", "pseudo"), ("seen", "pseudo", "residual"),
                                   ("seen", "pseudo", "normality"), ("normality", "residual")])
def test_heads_switch_parts_of_the_network_off(heads):
    net = _module(heads=heads).eval()
    assert tuple(net.heads) == tuple(h for h in HEADS if h in heads)
    with torch.no_grad():
        out = net(_images(2))
    for name in HEADS:
        assert (getattr(out, name) is None) == (name not in heads)
    present = {h: getattr(out, h) for h in heads}
    expected = sum(-s if h == "normality" else s for h, s in present.items())
    torch.testing.assert_close(out.score, expected)
    assert net.uses_reference == ("residual" in heads)


def test_without_the_residual_head_no_reference_runs():
    net = _module(heads=("seen", "pseudo")).train()
    bn = next(m for m in net.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d))
    calls = []
    handle = net.extractor.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        net(_images(4))
        with net.fixed_reference():
            assert net._held is None
    finally:
        handle.remove()
    assert calls == [4, 4] and int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("heads", [(), ("seen", "seen"), ("seen", "typo")])
def test_bad_heads_are_named(heads):
    with pytest.raises(ValueError, match="'heads'.*subset"):
        _module(heads=heads)


def test_set_reference_checks_shape_and_keeps_the_buffer_device():
    net = _module()
    with pytest.raises(ValueError, match="'images'.*\\(N_r, 3, S, S\\)"):
        net.set_reference(torch.rand(3, SIZE, SIZE))
    net.set_reference(torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64))
    assert net.reference_images.shape == (2, 3, SIZE, SIZE)
    assert net.reference_images.dtype == torch.float32
    assert "reference_images" in dict(net.named_buffers())


def test_residual_and_normality_heads_alone():
    head = ResidualHead(8, top_k=0.5)
    scores = head(torch.randn(3, 8, 4, 4))
    assert scores.shape == (3,) and (scores >= 0).all()
    assert head.conv.kernel_size == (3, 3) and head.conv.bias is None
    normality = NormalityHead(8, hidden=4)
    features = torch.randn(3, 8, 4, 4)
    # pooled features only: a spatial shuffle leaves the score unchanged
    shuffled = features.flatten(2)[..., torch.randperm(16)].view(3, 8, 4, 4)
    torch.testing.assert_close(normality(features), normality(shuffled))
    assert (normality(features) >= 0).all()
