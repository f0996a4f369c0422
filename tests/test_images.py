"""skad._images: array quirks refused up front, image files read as arrays are."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from skad._images import ImageInput, check_labels
from skad.datasets import load_folder

RNG = np.random.RandomState(0)
GRAY = RNG.randint(0, 256, (4, 10, 12)).astype(np.uint8)
RGB = RNG.randint(0, 256, (4, 10, 12, 3)).astype(np.uint8)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i2", ">u2", "float16", "longdouble",
                                   "int64", "bool"])
def test_byte_orders_and_float_widths_load_like_native_arrays(dtype):
    values = GRAY if np.dtype(dtype).kind in "iu" else (GRAY > 127 if dtype == "bool"
                                                          else GRAY / 255)
    reference = ImageInput(np.asarray(values, dtype=values.dtype.newbyteorder("=")))
    quirky = ImageInput(np.asarray(values, dtype=dtype))
    expected = reference.load([0, 2], 8)
    assert torch.allclose(quirky.load([0, 2], 8), expected, atol=1e-3)


@pytest.mark.parametrize("X, match", [
    ([np.zeros((8, 8)), np.zeros((9, 9))], r"X is a ragged sequence.*\(8, 8\), \(9, 9\)"),
    (np.zeros((2, 8, 8), complex), r"X has complex dtype.*np\.abs\(X\)"),
    (np.zeros((2, 8, 8), "datetime64[s]"), "X has dtype datetime64"),
    (np.full((2, 8, 8), 300, np.int16), r"X must lie in \[0, 255\].*X / 65535"),
    (np.zeros((2, 8, 8, 4)), r"X has shape \(2, 8, 8, 4\).*RGBA"),
    (np.zeros(3), r"got an array with 1 dimension"),
    (["a.png", np.zeros((8, 8))], "X mixes image file paths"),
    (np.str_("a.png"), r"X is a single path 'a.png'; pass a list"),
])
def test_array_quirks_are_refused_up_front_naming_x_and_the_fix(X, match):
    with pytest.raises(ValueError, match=match):
        ImageInput(X)


def test_labels_quirks_are_refused_naming_y():
    with pytest.raises(ValueError, match="y has complex dtype"):
        check_labels(np.array([1, -1, 1], complex), 3)
    with pytest.raises(ValueError, match="y is a ragged sequence.*one label per sample"):
        check_labels([[1], [1, -1], [1]], 3)


def test_paths_are_plain_strings_in_messages(tmp_path):
    data = ImageInput(np.array([str(tmp_path / "missing.png")]))
    assert type(data.paths[0]) is str
    with pytest.raises(FileNotFoundError) as info:
        data.load([0], 8)
    assert "np.str_" not in str(info.value) and "X[0]" in str(info.value)
    assert isinstance(info.value, ValueError)  # a clean ValueError too


def _write_mixed_folder(folder):
    """8-bit gray, 8-bit RGB, RGBA, palette, 16-bit gray PNGs and a float TIFF."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(GRAY[0]).save(folder / "gray.png")
    Image.fromarray(RGB[1]).save(folder / "rgb.png")
    Image.fromarray(RGB[2]).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(RGB[3]).quantize(64).save(folder / "palette.png")
    Image.fromarray(GRAY[1].astype(np.uint16) * 257).save(folder / "gray16.png")
    tifffile.imwrite(folder / "float.tif", (GRAY[2] / 255).astype(np.float32))
    return sorted(str(p) for p in folder.iterdir())


def test_mixed_gray_and_colour_files_load_as_one_batch(tmp_path):
    paths = _write_mixed_folder(tmp_path / "mixed")
    batch = ImageInput(paths).load(range(len(paths)), 16)
    assert batch.shape == (6, 3, 16, 16) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_files_load_exactly_as_the_same_images_given_as_arrays(tmp_path):
    for i, image in enumerate(RGB):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    paths = [str(tmp_path / f"{i}.png") for i in range(len(RGB))]
    for size in (10, 6):  # native resolution, and resized: bit for bit
        assert torch.equal(ImageInput(paths).load(range(4), size),
                           ImageInput(RGB).load(range(4), size))
    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    for i, image in enumerate(GRAY):
        Image.fromarray(image.astype(np.uint16) * 257).save(sixteen / f"{i}.png")
    from_16 = ImageInput(sorted(str(p) for p in sixteen.iterdir())).load(range(4), 6)
    assert torch.allclose(from_16, ImageInput(GRAY).load(range(4), 6), atol=1e-6)


def test_datasets_read_sixteen_bit_and_float_files_by_their_range(tmp_path):
    _write_mixed_folder(tmp_path / "good")
    data = load_folder(tmp_path, return_arrays=True)
    names = [p.rsplit("/", 1)[-1] for p in data.filenames]
    images = dict(zip(names, data.images))
    assert data.images.dtype == np.uint8 and data.images.shape == (6, 10, 12, 3)
    np.testing.assert_array_equal(images["gray16.png"][..., 0], GRAY[1])  # not clipped
    np.testing.assert_array_equal(images["float.tif"][..., 0], GRAY[2])  # not all zero
