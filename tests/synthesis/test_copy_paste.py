import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skad.synthesis import copy_paste
from skad.synthesis.copy_paste import _OP_FUNCS, _OPS, _otsu_foreground

# The package re-exports the function under the module's name.
copy_paste_module = importlib.import_module("skad.synthesis.copy_paste")

FAST = settings(deadline=None, max_examples=25)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _object_images(b=6, c=3, h=40, w=48, bright_object=True):
    """Dark background with a bright centred rectangle (or the reverse)."""
    bg, fg = (0.1, 0.85) if bright_object else (0.85, 0.1)
    images = torch.full((b, c, h, w), bg)
    images[:, :, 10:30, 14:38] = fg
    noise = 0.05 * torch.rand(b, c, h, w, generator=_gen(1))
    return images + noise


def _anomalies(n=3, c=3, h=40, w=48):
    anomalies = torch.rand(n, c, h, w, generator=_gen(2))
    masks = torch.zeros(n, 1, h, w)
    masks[0, :, 5:11, 6:14] = 1  # small box
    masks[1 % n, :, 20:23, 2:30] = 1  # thin bar
    masks[2 % n, :, 30:36, 30:34] = 1
    masks[2 % n, :, 32, 20:30] = 1  # with a one-pixel tail
    return anomalies, masks


def _non_empty(masks):
    return bool((masks.flatten(1).sum(1) > 0).all())


def _binary(masks):
    return set(masks.unique().tolist()) <= {0.0, 1.0}


def test_shapes_dtypes_and_contract():
    anomalies, anomaly_masks = _anomalies()
    for dtype in (torch.float32, torch.float64):
        images = _object_images().to(dtype)
        before = (images.clone(), anomalies.clone(), anomaly_masks.clone())
        new, masks = copy_paste(images, anomalies, anomaly_masks, generator=_gen())
        assert new.shape == images.shape and new.dtype == dtype
        assert masks.shape == (6, 1, 40, 48) and masks.dtype == dtype
        assert torch.equal(images, before[0]) and torch.equal(anomalies, before[1])
        assert torch.equal(anomaly_masks, before[2])
        assert _binary(masks) and _non_empty(masks)
        assert new.min() >= 0 and new.max() <= 1
        outside = masks.expand_as(images) == 0
        assert torch.equal(new[outside], images[outside])


def test_without_augmentation_the_cut_out_is_pasted_unchanged():
    anomalies = torch.zeros(1, 3, 40, 48)
    anomalies[:, :, 5:11, 6:14] = torch.tensor([0.3, 0.5, 0.7])[:, None, None]
    anomaly_masks = (anomalies[:, :1] > 0).float()
    images = _object_images(b=8)
    new, masks = copy_paste(images, anomalies, anomaly_masks, n_augmentations=0, generator=_gen())
    assert torch.equal(masks.flatten(1).sum(1), torch.full((8,), 48.0, dtype=masks.dtype))
    for image, mask in zip(new, masks):
        rows = mask[0].any(1).nonzero().flatten()
        cols = mask[0].any(0).nonzero().flatten()
        assert len(rows) == 6 and len(cols) == 8  # the same box shape
        pasted = image[:, mask[0].bool()]
        assert torch.equal(pasted, torch.tensor([0.3, 0.5, 0.7])[:, None].expand_as(pasted))


@pytest.mark.parametrize("bright_object", [True, False])
def test_pastes_on_the_otsu_foreground(bright_object):
    images = _object_images(b=16, bright_object=bright_object)
    foreground = torch.zeros(16, 40, 48, dtype=torch.bool)
    foreground[:, 10:30, 14:38] = True
    assert torch.equal(_otsu_foreground(images.mean(1, keepdim=True)), foreground)
    anomalies, anomaly_masks = _anomalies()
    _, masks = copy_paste(images, anomalies, anomaly_masks, generator=_gen())
    on_object = (masks[:, 0].bool() & foreground).flatten(1).sum(1)
    assert (on_object > 0).all()
    # Most of the anomalous pixels land on the object, not just one.
    assert on_object.sum() / masks.sum() > 0.5


def test_explicit_threshold_and_no_foreground_fallback():
    images = _object_images(b=6)
    anomalies, anomaly_masks = _anomalies()
    _, masks = copy_paste(
        images, anomalies, anomaly_masks, foreground_threshold=0.5, generator=_gen()
    )
    assert ((masks[:, 0, 10:30, 14:38].flatten(1).sum(1)) > 0).all()
    # Nothing is above 1: no foreground anywhere; the anomaly goes anywhere.
    _, masks = copy_paste(
        images, anomalies, anomaly_masks, foreground_threshold=1.0, generator=_gen()
    )
    assert _non_empty(masks) and _binary(masks)
    # Flat images: Otsu has nothing to split; still a valid anomaly.
    flat = torch.full((4, 3, 24, 24), 0.5)
    new, masks = copy_paste(flat, anomalies, anomaly_masks, generator=_gen())
    assert _non_empty(masks) and new.shape == flat.shape


def test_determinism():
    images = _object_images()
    anomalies, anomaly_masks = _anomalies()
    a = copy_paste(images, anomalies, anomaly_masks, generator=_gen(5))
    b = copy_paste(images, anomalies, anomaly_masks, generator=_gen(5))
    c = copy_paste(images, anomalies, anomaly_masks, generator=_gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    torch.manual_seed(0)
    d = copy_paste(images, anomalies, anomaly_masks)
    torch.manual_seed(0)
    assert torch.equal(d[0], copy_paste(images, anomalies, anomaly_masks)[0])


@FAST
@given(
    n_aug=st.integers(0, 9),
    channels=st.sampled_from([(1, 1), (1, 3), (3, 1), (3, 3)]),
    size=st.tuples(st.integers(6, 40), st.integers(6, 40)),
    source_size=st.tuples(st.integers(4, 60), st.integers(4, 60)),
    seed=st.integers(0, 2**31),
)
def test_properties(n_aug, channels, size, source_size, seed):
    (c_img, c_src), (h, w), (sh, sw) = channels, size, source_size
    g = _gen(seed)
    images = torch.rand(5, c_img, h, w, generator=g)
    anomalies = torch.rand(3, c_src, sh, sw, generator=g)
    # Random sparse masks, thin and scattered shapes included, one empty.
    anomaly_masks = torch.rand(3, 1, sh, sw, generator=g) > 0.9
    anomaly_masks[0, 0, sh // 2, sw // 2] = True
    anomaly_masks[1] = False
    new, masks = copy_paste(images, anomalies, anomaly_masks, n_augmentations=n_aug, generator=g)
    assert new.shape == images.shape and masks.shape == (5, 1, h, w)
    assert _binary(masks) and _non_empty(masks)
    assert new.min() >= 0 and new.max() <= 1
    outside = masks.expand_as(images) == 0
    assert torch.equal(new[outside], images[outside])


def test_large_anomalies_and_three_dim_masks():
    # Anomalies bigger than the images: cropped at the border, never empty.
    images = torch.rand(4, 3, 16, 16, generator=_gen())
    anomalies = torch.rand(2, 3, 64, 64, generator=_gen())
    anomaly_masks = torch.ones(2, 64, 64)
    new, masks = copy_paste(images, anomalies, anomaly_masks, generator=_gen())
    assert _non_empty(masks) and new.shape == images.shape


@pytest.mark.parametrize("name", _OPS)
def test_each_augmentation_keeps_the_canvas_valid(name):
    g = _gen(3)
    canvas = torch.zeros(4, 4, 12, 12)
    canvas[:, :3, :7, :9] = torch.rand(4, 3, 7, 9, generator=g)
    canvas[:, 3, 1:6, 2:8] = 1.0
    op = _OP_FUNCS[_OPS.index(name)]
    params = torch.rand(4, 2, generator=g, dtype=torch.float64)
    out = op(canvas.clone(), params, g)
    assert out.shape == canvas.shape
    assert out[:, :3].min() >= 0 and out[:, :3].max() <= 1 + 1e-6
    if name in ("flip", "rotate90", "transpose"):
        # Rigid: the mask keeps its pixel count.
        assert torch.equal(out[:, 3].sum((1, 2)), canvas[:, 3].sum((1, 2)))
    if name in ("noise", "brightness", "sharpness", "blur"):
        # Photometric: the mask is untouched.
        assert torch.equal(out[:, 3], canvas[:, 3])


def test_spatial_ops_see_the_anomaly_surroundings(monkeypatch):
    # A flat anomaly image: every spatial op (rigid, distortion, translation,
    # blur, sharpening) must paste exactly that colour. A canvas padded with
    # zeros would darken the anomaly's edge.
    identity = lambda x, p, g: x  # noqa: E731
    funcs = tuple(
        identity if name in ("noise", "brightness") else op for name, op in zip(_OPS, _OP_FUNCS)
    )
    monkeypatch.setattr(copy_paste_module, "_OP_FUNCS", funcs)
    anomalies = torch.full((2, 3, 40, 48), 0.6)
    _, anomaly_masks = _anomalies(n=2)
    anomaly_masks[1, :, 0:12, 0:6] = 1  # touching the image border
    images = _object_images(b=16)
    new, masks = copy_paste(images, anomalies, anomaly_masks, n_augmentations=9, generator=_gen())
    assert _non_empty(masks)
    pasted = new.permute(0, 2, 3, 1)[masks[:, 0].bool()]
    assert torch.allclose(pasted, torch.tensor(0.6), atol=1e-5)


def test_validation():
    images = _object_images(b=2)
    anomalies, anomaly_masks = _anomalies()
    with pytest.raises(ValueError, match="empty"):
        copy_paste(images, anomalies, torch.zeros_like(anomaly_masks))
    with pytest.raises(ValueError, match="anomaly_masks"):
        copy_paste(images, anomalies, anomaly_masks[:, :, :10])
    with pytest.raises(ValueError, match="anomalies"):
        copy_paste(images, anomalies[0], anomaly_masks)
    with pytest.raises(ValueError, match="n_augmentations"):
        copy_paste(images, anomalies, anomaly_masks, n_augmentations=10)
    with pytest.raises(ValueError, match="foreground_threshold"):
        copy_paste(images, anomalies, anomaly_masks, foreground_threshold="otsu")
    with pytest.raises(ValueError, match="images"):
        copy_paste(images[0], anomalies, anomaly_masks)
