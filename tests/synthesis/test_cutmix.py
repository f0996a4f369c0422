import math

import pytest
import torch

from skad.synthesis import cutmix


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=6, c=3, h=32, w=40, seed=0):
    return torch.rand(b, c, h, w, generator=_gen(seed))


def _box(mask):
    """(top, left, height, width) of the single box in a (1, H, W) mask."""
    rows = mask[0].any(dim=1).nonzero().flatten()
    cols = mask[0].any(dim=0).nonzero().flatten()
    return int(rows[0]), int(cols[0]), len(rows), len(cols)


def test_shapes_dtypes_device():
    for dtype in (torch.float32, torch.float64):
        images = _images().to(dtype)
        new, masks = cutmix(images, generator=_gen())
        assert new.shape == images.shape and new.dtype == dtype
        assert masks.shape == (6, 1, 32, 40) and masks.dtype == dtype
        assert new.device == images.device == masks.device


def test_masks_binary_rectangular_and_non_empty():
    _, masks = cutmix(_images(b=16), generator=_gen())
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    for mask in masks:
        top, left, height, width = _box(mask)
        assert height >= 1 and width >= 1
        # The mask is exactly its bounding box: a filled rectangle.
        assert mask.sum() == height * width
        assert mask[0, top : top + height, left : left + width].all()


def test_pixels_outside_mask_unchanged_inside_changed():
    images = _images(b=8)
    new, masks = cutmix(images, generator=_gen(1))
    outside = ~masks.bool().expand_as(images)
    assert torch.equal(new[outside], images[outside])
    # Distinct random images: every pasted pixel differs from what it covers.
    inside = masks.bool().expand_as(images)
    assert (new[inside] != images[inside]).all()


def test_box_area_and_aspect_within_bounds():
    area, aspect = (0.02, 0.15), (0.3, 1 / 0.3)
    h, w = 96, 128  # large enough that no box of these ranges is clipped
    images = _images(b=64, c=1, h=h, w=w)
    _, masks = cutmix(images, area=area, aspect=aspect, generator=_gen())
    fractions, ratios = [], []
    for mask in masks:
        _, _, bh, bw = _box(mask)
        fractions.append(bh * bw / (h * w))
        ratios.append(bw / bh)
    # Each side is rounded by at most half a pixel: <= 8 % on the smallest
    # box (sides 8.6 x 28.6 px) and less on larger ones.
    assert area[0] * 0.9 <= min(fractions) and max(fractions) <= area[1] * 1.1
    assert aspect[0] * 0.85 <= min(ratios) and max(ratios) <= aspect[1] / 0.85
    # Uniform area, log-uniform aspect: centred on the middle of the ranges.
    assert abs(sum(fractions) / 64 - sum(area) / 2) < 0.02
    assert abs(sum(math.log(r) for r in ratios) / 64) < 0.3


def test_fixed_box_size():
    # A degenerate range pins the size: 0.25 * 16 * 16 = 64 = 8 x 8 at aspect 1.
    _, masks = cutmix(_images(b=5, h=16, w=16), area=(0.25, 0.25), aspect=(1, 1), generator=_gen())
    assert (masks.sum(dim=(1, 2, 3)) == 64).all()
    for mask in masks:
        assert _box(mask)[2:] == (8, 8)


def test_tiny_images_and_large_boxes_clipped():
    _, masks = cutmix(_images(b=4, h=2, w=3), area=(0.01, 0.01), generator=_gen())
    assert (masks.sum(dim=(1, 2, 3)) >= 1).all()
    _, masks = cutmix(_images(b=4, h=8, w=8), area=(1.0, 1.0), aspect=(10, 10), generator=_gen())
    for mask in masks:
        _, _, bh, bw = _box(mask)
        assert bw == 8 and 1 <= bh <= 8


def _coded_sources(n, h, w):
    """Sources whose every pixel encodes (image, row, column) in channel values."""
    idx = torch.arange(n, dtype=torch.float64)[:, None, None].expand(n, h, w)
    rows = torch.arange(h, dtype=torch.float64)[None, :, None].expand(n, h, w)
    cols = torch.arange(w, dtype=torch.float64)[None, None, :].expand(n, h, w)
    return torch.stack([idx, rows, cols], dim=1)


@pytest.mark.parametrize("n_sources, src_hw", [(1, (20, 25)), (3, (12, 50)), (7, (40, 40))])
def test_without_jitter_box_is_a_translated_copy_of_one_source(n_sources, src_hw):
    images = torch.full((5, 3, 24, 30), -1.0, dtype=torch.float64)
    sources = _coded_sources(n_sources, *src_hw)
    new, masks = cutmix(images, sources=sources, jitter=0.0, generator=_gen(2))
    for img, mask in zip(new, masks):
        top, left, bh, bw = _box(mask)
        patch = img[:, top : top + bh, left : left + bw]
        source = patch[0].unique()
        assert len(source) == 1 and 0 <= source.item() < n_sources
        # Rows and columns are consecutive: an unscaled, unflipped copy.
        row0, col0 = patch[1, 0, 0].item(), patch[2, 0, 0].item()
        torch.testing.assert_close(
            patch[1], row0 + torch.arange(bh)[:, None].double().expand(bh, bw)
        )
        torch.testing.assert_close(
            patch[2], col0 + torch.arange(bw)[None, :].double().expand(bh, bw)
        )
        assert row0 + bh <= src_hw[0] and col0 + bw <= src_hw[1]


def test_source_is_another_image_of_the_batch():
    b = 6
    images = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, 16, 16)
    for seed in range(5):
        new, masks = cutmix(images, jitter=0.0, generator=_gen(seed))
        for i in range(b):
            pasted = new[i][masks[i].bool()].unique()
            assert len(pasted) == 1 and pasted.item() != i


def test_single_image_uses_itself():
    images = _images(b=1)
    new, masks = cutmix(images, generator=_gen())
    assert new.shape == images.shape and masks.sum() >= 1
    new, masks = cutmix(images, sources=images, jitter=0.0, generator=_gen())
    assert new.shape == images.shape


def test_determinism_and_seed_sensitivity():
    images = _images()
    a = cutmix(images, generator=_gen(7))
    b = cutmix(images, generator=_gen(7))
    c = cutmix(images, generator=_gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_default_generator_follows_global_seed():
    images = _images()
    torch.manual_seed(3)
    a = cutmix(images)
    torch.manual_seed(3)
    b = cutmix(images)
    assert torch.equal(a[0], b[0])


def test_inputs_not_mutated():
    images, sources = _images(), _images(b=3, seed=1)
    images_copy, sources_copy = images.clone(), sources.clone()
    new, _ = cutmix(images, sources=sources, generator=_gen())
    assert torch.equal(images, images_copy) and torch.equal(sources, sources_copy)
    assert new.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_jitter_changes_patch_within_source_range(channels):
    images = torch.zeros(4, channels, 16, 16)
    sources = _images(b=2, c=channels, seed=3)
    plain, masks = cutmix(images, sources=sources, jitter=0.0, generator=_gen(4))
    jittered, masks_j = cutmix(images, sources=sources, jitter=0.1, generator=_gen(4))
    assert torch.equal(masks, masks_j)  # jitter draws do not move the boxes
    inside = masks.bool().expand_as(images)
    assert not torch.equal(plain[inside], jittered[inside])
    # Mild: mean absolute change well below the value range.
    assert (plain[inside] - jittered[inside]).abs().mean() < 0.15
    low = sources.amin(dim=(0, 2, 3)).view(1, -1, 1, 1).expand_as(images)
    high = sources.amax(dim=(0, 2, 3)).view(1, -1, 1, 1).expand_as(images)
    assert (jittered[inside] >= low[inside]).all() and (jittered[inside] <= high[inside]).all()


def test_jitter_is_normalisation_equivariant():
    images = _images(b=4)
    scale = 1 / 0.226
    shift = torch.tensor([-0.485, -0.456, -0.406]).view(1, 3, 1, 1) * scale
    raw, masks = cutmix(images, generator=_gen(5))
    normed, masks_n = cutmix(images * scale + shift, generator=_gen(5))
    assert torch.equal(masks, masks_n)
    torch.testing.assert_close(normed, raw * scale + shift, rtol=1e-5, atol=1e-4)


def test_works_on_any_value_range():
    images = _images() * 255
    new, masks = cutmix(images, generator=_gen())
    assert torch.isfinite(new).all()
    assert new.min() >= 0 and new.max() <= 255


def test_empty_batch():
    new, masks = cutmix(torch.zeros(0, 3, 8, 8), sources=_images(b=2, h=8, w=8))
    assert new.shape == (0, 3, 8, 8) and masks.shape == (0, 1, 8, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": torch.zeros(3, 8, 8)}, r"'images'.*\(B, C, H, W\)"),
        ({"images": torch.zeros(2, 3, 8, 8, dtype=torch.long)}, r"'images'.*floating"),
        ({"sources": torch.zeros(2, 1, 8, 8)}, r"'sources'.*\(N, 3, h, w\)"),
        ({"sources": torch.zeros(0, 3, 8, 8)}, r"'sources'.*N >= 1"),
        ({"area": (0.0, 0.1)}, r"'area'"),
        ({"area": (0.2, 0.1)}, r"'area'"),
        ({"area": (0.1, 1.5)}, r"'area'"),
        ({"aspect": (-1, 2)}, r"'aspect'"),
        ({"aspect": 2.0}, r"'aspect'"),
        ({"jitter": 1.0}, r"'jitter'.*\[0, 1\)"),
        ({"jitter": -0.1}, r"'jitter'"),
    ],
)
def test_validation(kwargs, match):
    args = {"images": torch.zeros(2, 3, 8, 8)}
    args.update(kwargs)
    images = args.pop("images")
    with pytest.raises(ValueError, match=match):
        cutmix(images, **args)
