import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as F

from skad.synthesis import (
    PerlinAnomalySynthesizer,
    load_builtin_textures,
    perlin_mask,
    perlin_noise,
)
from skad.synthesis import perlin as perlin_module
from skad.synthesis._augment import (
    _tab_autocontrast,
    _tab_equalize,
    _tab_posterize,
    _tab_solarize,
    hue_saturation_matrices,
    level_histograms,
    smooth3x3,
)
from skad.synthesis.perlin import _fade

FAST = settings(deadline=None, max_examples=25)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=6, c=3, h=32, w=40, seed=0):
    return torch.rand(b, c, h, w, generator=_gen(seed))


def _non_empty(masks):
    return bool((masks.flatten(1).sum(1) > 0).all())


def _binary(masks):
    return set(masks.unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------- #
# perlin_noise
# --------------------------------------------------------------------------- #
def test_noise_shape_dtype_range():
    noise = perlin_noise((8, 48, 64), generator=_gen())
    assert noise.shape == (8, 48, 64) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1.0 + 1e-5
    # Not degenerate: a sizeable spread of values.
    assert noise.std() > 0.05


def test_fade_is_quintic_with_flat_ends():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(_fade(t), 6 * t**5 - 15 * t**4 + 10 * t**3)
    assert _fade(torch.tensor(0.0)) == 0 and _fade(torch.tensor(1.0)) == 1
    # Zero slope at both ends (finite differences).
    eps = 1e-4
    for end in (0.0, 1.0 - eps):
        x = torch.tensor([end, end + eps], dtype=torch.float64)
        assert abs(float(_fade(x).diff())) / eps < 1e-6


@FAST
@given(a=st.integers(0, 4), b=st.integers(0, 4), k=st.integers(1, 3), seed=st.integers(0, 99))
def test_noise_is_zero_at_lattice_nodes(a, b, k, seed):
    height, width = 2**a * 4 * k, 2**b * 4 * k
    noise = perlin_noise((3, height, width), scale=(a, b), generator=_gen(seed))
    ys = torch.arange(0, height, height // 2**a)
    xs = torch.arange(0, width, width // 2**b)
    nodes = noise[:, ys][:, :, xs]
    assert torch.all(nodes.abs() < 1e-6)
    # ... and only there: the noise is not identically zero.
    assert noise.abs().max() > 1e-3


def test_noise_scale_forms_and_validation():
    per_image = torch.tensor([[0, 0], [3, 1]])
    noise = perlin_noise((2, 32, 32), scale=per_image, generator=_gen())
    # Lattice (1, 1): only the corner node lies on the grid, at (0, 0).
    assert noise[0, 0, 0].abs() < 1e-6
    assert noise[1, 4, 16].abs() < 1e-6
    assert perlin_noise((2, 16, 16), scale=2, generator=_gen()).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="scale"):
        perlin_noise((2, 16, 16), scale=-1)
    with pytest.raises(ValueError, match="scale"):
        perlin_noise((2, 16, 16), scale=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        perlin_noise((2, 16))
    with pytest.raises(TypeError, match="generator"):
        perlin_noise((2, 16, 16), generator=0)


def test_noise_determinism():
    a = perlin_noise((4, 32, 32), generator=_gen(1))
    b = perlin_noise((4, 32, 32), generator=_gen(1))
    c = perlin_noise((4, 32, 32), generator=_gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = perlin_noise((4, 32, 32))
    torch.manual_seed(5)
    assert torch.equal(d, perlin_noise((4, 32, 32)))


# --------------------------------------------------------------------------- #
# perlin_mask
# --------------------------------------------------------------------------- #
@FAST
@given(
    threshold=st.floats(-0.5, 3.0),
    height=st.integers(4, 80),
    width=st.integers(4, 80),
    max_scale=st.integers(0, 5),
    seed=st.integers(0, 2**31),
)
def test_masks_binary_and_never_empty(threshold, height, width, max_scale, seed):
    masks = perlin_mask(
        (5, height, width), threshold=threshold, max_scale=max_scale, generator=_gen(seed)
    )
    assert masks.shape == (5, 1, height, width) and masks.dtype == torch.float32
    assert _binary(masks) and _non_empty(masks)


def test_empty_masks_are_redrawn_alone_then_fall_back(monkeypatch):
    calls = []
    original = perlin_module._raw_perlin_masks

    def recording(batch, *args):
        calls.append(batch)
        return original(batch, *args)

    monkeypatch.setattr(perlin_module, "_raw_perlin_masks", recording)
    # A high threshold: about half of the first draws are empty.
    masks = perlin_mask((64, 32, 32), threshold=0.7, generator=_gen())
    assert _non_empty(masks)
    assert calls[0] == 64 and all(n < 64 for n in calls[1:])
    assert calls == sorted(calls, reverse=True)  # only the still-empty ones

    # Noise never exceeds 1: every redraw fails and the blob fallback kicks in.
    calls.clear()
    masks = perlin_mask((8, 32, 32), threshold=1.5, generator=_gen())
    assert _non_empty(masks) and _binary(masks)
    assert len(calls) == 1 + perlin_module._MAX_RETRIES
    # Fallback blobs are small: 5-15% of each side as radii.
    assert masks.flatten(1).mean(1).max() < 0.1


def test_mask_area_statistics():
    masks = perlin_mask((256, 64, 64), generator=_gen())
    area = masks.flatten(1).mean(1)
    # DRAEM's recipe gives blobs covering a few percent of the image.
    assert 0.02 < float(area.mean()) < 0.12
    assert float(area.max()) < 0.8
    # Coarse and fine lattices both occur: the areas vary a lot.
    assert float(area.std()) > 0.01
    # A lower threshold gives larger masks.
    assert perlin_mask((256, 64, 64), threshold=0.2, generator=_gen()).mean() > area.mean()


def test_mask_rotation_and_determinism():
    a = perlin_mask((6, 32, 48), generator=_gen(3))
    b = perlin_mask((6, 32, 48), generator=_gen(3))
    c = perlin_mask((6, 32, 48), generator=_gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    unrotated = perlin_mask((6, 32, 48), rotate=None, generator=_gen(3))
    assert _binary(unrotated) and _non_empty(unrotated)
    with pytest.raises(ValueError, match="rotate"):
        perlin_mask((2, 8, 8), rotate=(10, -10))
    with pytest.raises(ValueError, match="threshold"):
        perlin_mask((2, 8, 8), threshold="high")


def test_large_masks_use_subsampled_noise_but_stay_smooth():
    # 256 px: computed at 128 px and upsampled; blobs are still not blocky,
    # i.e. boundaries are not aligned on 2x2 blocks.
    masks = perlin_mask((8, 256, 256), generator=_gen())
    assert _non_empty(masks) and _binary(masks)
    blocks = masks[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).reshape(8, 128, 128, 4)
    mixed = (blocks.sum(-1) % 4 != 0).sum()
    assert mixed > 0


# --------------------------------------------------------------------------- #
# Table ops match torchvision on 8-bit images
# --------------------------------------------------------------------------- #
def _u8(seed=0, shape=(2, 3, 24, 20), low=0, high=256):
    return torch.randint(low, high, shape, generator=_gen(seed), dtype=torch.uint8)


def _apply(images, tables):
    idx = images.long()
    return tables.float().gather(2, idx.flatten(2)).view(images.shape)


def _identity(n):
    return torch.linspace(0, 1, 256, dtype=torch.float64).expand(n, 3, 256).clone()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table_equalize_and_autocontrast_match_torchvision(seed):
    images = _u8(seed, low=30, high=200)
    hist = level_histograms(images)
    u = torch.zeros(2, 2, dtype=torch.float64)
    equalized = _apply(images, _tab_equalize(_identity(2), u, hist))
    assert torch.equal(equalized, F.equalize(images).float() / 255)
    stretched = _apply(images, _tab_autocontrast(_identity(2), u, hist))
    expected = F.autocontrast(images.float() / 255)
    assert torch.allclose(stretched, expected, atol=1e-6)


def test_table_posterize_and_solarize_match_torchvision():
    images = _u8()
    hist = level_histograms(images)
    for bits in range(1, 8):
        u = torch.full((2, 2), (bits - 1 + 0.5) / 7, dtype=torch.float64)
        got = _apply(images, _tab_posterize(_identity(2), u, hist))
        assert torch.equal(got, F.posterize(images, bits).float() / 255)
    u = torch.full((2, 2), 0.5, dtype=torch.float64)  # threshold 80 / 255
    got = _apply(images, _tab_solarize(_identity(2), u, hist))
    assert torch.allclose(got, F.solarize(images.float() / 255, 80 / 255), atol=1e-6)


def test_smooth3x3_and_hue_matrices():
    x = torch.rand(3, 3, 17, 23, generator=_gen())
    assert torch.allclose(smooth3x3(x), F.adjust_sharpness(x, 0.0), atol=1e-6)
    angle = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    matrices = hue_saturation_matrices(angle, torch.tensor([1.0, 1.0, 0.5]).double())
    assert torch.allclose(matrices[0], torch.eye(3, dtype=torch.float64), atol=1e-9)
    grey = torch.full((3,), 0.4, dtype=torch.float64)
    # Greys have no chroma: hue and saturation changes leave them alone.
    assert torch.allclose(matrices @ grey, grey.expand(3, 3), atol=1e-9)


# --------------------------------------------------------------------------- #
# PerlinAnomalySynthesizer
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def synth():
    return PerlinAnomalySynthesizer()


def test_synth_shapes_dtypes_and_contract(synth):
    for dtype in (torch.float32, torch.float64):
        images = _images().to(dtype)
        before = images.clone()
        new, masks = synth(images, generator=_gen())
        assert new.shape == images.shape and new.dtype == dtype
        assert masks.shape == (6, 1, 32, 40) and masks.dtype == dtype
        assert torch.equal(images, before)  # not modified in place
        assert _binary(masks) and _non_empty(masks)
        assert new.min() >= 0 and new.max() <= 1
        outside = masks.expand_as(images) == 0
        # Outside the masks: bit-for-bit the input.
        assert torch.equal(new[outside], images[outside])
        # Inside: beta <= 0.8, so (almost) every pixel moves.
        changed = (new != images).any(1, keepdim=True)[masks.bool()]
        assert changed.float().mean() > 0.95


@FAST
@given(
    n_aug=st.integers(0, 10),
    beta=st.tuples(st.floats(0, 0.9), st.floats(0, 0.09)).map(lambda t: (t[0], t[0] + t[1])),
    channels=st.sampled_from([1, 3]),
    height=st.integers(8, 40),
    width=st.integers(8, 40),
    seed=st.integers(0, 2**31),
)
def test_synth_properties(n_aug, beta, channels, height, width, seed):
    # Small random textures keep the per-size cache cheap to build.
    textures = torch.rand(3, 3, 24, 24, generator=_gen())
    synth = PerlinAnomalySynthesizer(textures, n_augmentations=n_aug, beta=beta)
    images = _images(b=4, c=channels, h=height, w=width, seed=seed % 1000)
    new, masks = synth(images, generator=_gen(seed))
    assert new.shape == images.shape and masks.shape == (4, 1, height, width)
    assert _binary(masks) and _non_empty(masks)
    assert new.min() >= 0 and new.max() <= 1
    outside = masks.expand_as(images) == 0
    assert torch.equal(new[outside], images[outside])


def test_synth_blend_formula_with_constant_texture():
    colour = torch.tensor([0.2, 0.6, 1.0])
    texture = colour[None, :, None, None].expand(1, 3, 16, 16)
    images = _images(b=5, h=24, w=24)
    expected_a = torch.round(colour * 255) / 255  # sources are stored as 8-bit
    # beta = 0: the texture replaces the image inside the mask.
    synth = PerlinAnomalySynthesizer(texture, n_augmentations=0, beta=(0.0, 0.0))
    new, masks = synth(images, generator=_gen())
    inside = masks[:, 0].bool()
    assert torch.allclose(new.permute(0, 2, 3, 1)[inside], expected_a.expand(int(inside.sum()), 3))
    # beta = 0.5: halfway; beta = 1: nothing changes.
    synth = PerlinAnomalySynthesizer(texture, n_augmentations=0, beta=(0.5, 0.5))
    new, masks = synth(images, generator=_gen())
    inside = masks[:, 0].bool()
    want = 0.5 * images.permute(0, 2, 3, 1)[inside] + 0.5 * expected_a
    assert torch.allclose(new.permute(0, 2, 3, 1)[inside], want, atol=1e-6)
    synth = PerlinAnomalySynthesizer(texture, n_augmentations=0, beta=(1.0, 1.0))
    assert torch.equal(synth(images, generator=_gen())[0], images)


def test_synth_determinism(synth):
    images = _images()
    a = synth(images, generator=_gen(7))
    b = synth(images, generator=_gen(7))
    c = synth(images, generator=_gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Without a generator calls differ, unless torch's global seed is set.
    torch.manual_seed(0)
    d = synth(images)
    torch.manual_seed(0)
    assert torch.equal(d[0], synth(images)[0])


def test_synth_grayscale_and_non_square(synth):
    images = _images(b=4, c=1, h=28, w=52)
    new, masks = synth(images, generator=_gen())
    assert new.shape == (4, 1, 28, 52) and masks.shape == (4, 1, 28, 52)
    outside = masks == 0
    assert torch.equal(new[outside], images[outside])
    assert (new != images)[masks.bool()].float().mean() > 0.95


def test_synth_rotate_prob_rotates_the_base_image():
    images = _images(b=4, h=32, w=32)
    synth = PerlinAnomalySynthesizer(rotate_prob=1.0)
    new, masks = synth(images, generator=_gen())
    outside = masks.expand_as(images) == 0
    assert not torch.equal(new[outside], images[outside])
    assert _binary(masks) and _non_empty(masks) and new.min() >= 0 and new.max() <= 1


def test_synth_tensor_sources_gray_and_uint8():
    images = _images(b=3)
    gray = torch.rand(2, 1, 20, 30, generator=_gen())
    new, masks = PerlinAnomalySynthesizer(gray)(images, generator=_gen())
    assert _non_empty(masks) and new.shape == images.shape
    u8 = (torch.rand(2, 3, 50, 10, generator=_gen()) * 255).to(torch.uint8)
    synth = PerlinAnomalySynthesizer(u8)
    new, masks = synth(images, generator=_gen())
    assert synth.n_sources_ == 2 and _non_empty(masks)


def test_synth_folder_sources(tmp_path):
    rng = np.random.default_rng(0)
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        shape = (30 + i, 40) if mode == "L" else (30 + i, 40, len(mode))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(
            tmp_path / f"texture_{i}.png"
        )
    (tmp_path / "notes.txt").write_text("not an image")
    synth = PerlinAnomalySynthesizer(tmp_path)
    new, masks = synth(_images(b=3), generator=_gen())
    assert synth.n_sources_ == 3
    assert _non_empty(masks) and new.shape == (3, 3, 32, 40)
    # str paths work as well, and pickling drops the caches.
    synth = pickle.loads(pickle.dumps(PerlinAnomalySynthesizer(str(tmp_path))))
    assert _non_empty(synth(_images(b=2), generator=_gen())[1])


def test_synth_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        PerlinAnomalySynthesizer(tmp_path)(_images(b=1))
    with pytest.raises(FileNotFoundError):
        PerlinAnomalySynthesizer(tmp_path / "missing")(_images(b=1))


def test_synth_caches_per_size_and_pickles(synth):
    synth(_images(b=2, h=16, w=16), generator=_gen())
    synth(_images(b=2, h=24, w=20), generator=_gen())
    assert {(16, 16, "cpu"), (24, 20, "cpu")} <= set(synth._caches)
    clone = pickle.loads(pickle.dumps(synth))
    assert clone._caches == {}
    a = clone(_images(b=2), generator=_gen())[0]
    assert torch.equal(a, synth(_images(b=2), generator=_gen())[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": (0.5, 0.2)}, "beta"),
        ({"beta": (0.0, 1.5)}, "beta"),
        ({"n_augmentations": 11}, "n_augmentations"),
        ({"rotate_prob": 1.5}, "rotate_prob"),
        ({"texture_scales": (0.5,)}, "texture_scales"),
        ({"sources": torch.rand(2, 2, 8, 8)}, "sources"),
        ({"sources": 3}, "sources"),
        ({"mask_rotate": (1, 0)}, "mask_rotate"),
    ],
)
def test_synth_parameter_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerlinAnomalySynthesizer(**kwargs)


def test_synth_input_validation(synth):
    with pytest.raises(ValueError, match="images"):
        synth(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        synth(torch.rand(2, 2, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        synth(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert "PerlinAnomalySynthesizer" in repr(synth)


# --------------------------------------------------------------------------- #
# Built-in textures
# --------------------------------------------------------------------------- #
def test_builtin_textures_offline():
    textures = load_builtin_textures(48)
    assert textures.shape == (10, 3, 48, 48) and textures.dtype == torch.float32
    assert textures.min() >= 0 and textures.max() <= 1
    # Every texture has structure (not flat) and they differ from each other.
    assert (textures.flatten(1).std(1) > 0.03).all()
    assert torch.cdist(textures.flatten(1), textures.flatten(1)).fill_diagonal_(1).min() > 0
    assert load_builtin_textures((20, 30)).shape == (10, 3, 20, 30)
    with pytest.raises(ValueError, match="size"):
        load_builtin_textures(0)
