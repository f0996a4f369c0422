"""skad._io: one reader of image files, for every bit depth, mode and orientation."""

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from skad._io import (
    ImageFileError,
    MissingImageError,
    image_channels,
    image_size,
    read_image,
    resize_image,
    scan_images,
    to_uint8,
)

RNG = np.random.RandomState(0)
GRAY = RNG.randint(0, 256, (6, 8)).astype(np.uint8)
RGB = RNG.randint(0, 256, (6, 8, 3)).astype(np.uint8)
GRAY12 = RNG.randint(0, 4096, (6, 8)).astype(np.uint16)


def write_tiff12(path, values):
    """A minimal uncompressed TIFF with packed 12-bit gray samples (even width)."""
    h, w = values.shape
    pairs = values.reshape(-1, 2).astype(np.uint32)
    packed = np.stack([pairs[:, 0] >> 4, ((pairs[:, 0] & 15) << 4) | (pairs[:, 1] >> 8),
                       pairs[:, 1] & 255], 1).astype(np.uint8).tobytes()
    tags = [(256, 3, w), (257, 3, h), (258, 3, 12), (259, 3, 1), (262, 3, 1), (273, 4, None),
            (277, 3, 1), (278, 3, h), (279, 4, len(packed))]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = data_offset if value is None else value
        out += struct.pack("<HHI", tag, kind, 1)
        out += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    path.write_bytes(out + struct.pack("<I", 0) + packed)


def garbage_pixels_png(path):
    """A PNG whose chunks all have valid checksums but whose pixel data is not zlib data."""
    Image.fromarray(GRAY).save(path)
    data = path.read_bytes()
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    garbage = bytes(RNG.randint(0, 256, length).astype(np.uint8))
    chunk = struct.pack(">I", length) + b"IDAT" + garbage
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + garbage) & 0xFFFFFFFF)
    path.write_bytes(data[:start] + chunk + data[start + 12 + length:])


#: name -> (writer, expected float image)
FILES = {
    "gray8.png": (lambda p: Image.fromarray(GRAY).save(p), GRAY / 255),
    "bilevel.png": (lambda p: Image.fromarray(GRAY > 127).save(p), (GRAY > 127) * 1.0),
    "gray_alpha.png": (lambda p: Image.fromarray(GRAY).convert("LA").save(p), GRAY / 255),
    "rgb8.png": (lambda p: Image.fromarray(RGB).save(p), RGB / 255),
    "rgba.png": (lambda p: Image.fromarray(RGB).convert("RGBA").save(p), RGB / 255),
    "palette.png": (lambda p: Image.fromarray(RGB).quantize(256).save(p), None),
    "gray_palette.png": (lambda p: Image.fromarray(GRAY).convert("P").save(p), GRAY / 255),
    "gray16.png": (lambda p: Image.fromarray(GRAY.astype(np.uint16) * 257).save(p), GRAY / 255),
    "rgb.bmp": (lambda p: Image.fromarray(RGB).save(p), RGB / 255),
    "rgb.webp": (lambda p: Image.fromarray(RGB).save(p, lossless=True), RGB / 255),
    "cmyk.tif": (lambda p: Image.fromarray(RGB).convert("CMYK").save(p),
                 np.asarray(Image.fromarray(RGB).convert("CMYK").convert("RGB")) / 255),
    "gray8.tif": (lambda p: tifffile.imwrite(p, GRAY), GRAY / 255),
    "gray16.tif": (lambda p: tifffile.imwrite(p, GRAY.astype(np.uint16) * 257), GRAY / 255),
    "gray12.tif": (lambda p: write_tiff12(p, GRAY12), GRAY12 / 4095),
    "signed16.tif": (lambda p: tifffile.imwrite(
        p, (GRAY.astype(np.int32) * 257 - 32768).astype(np.int16)), GRAY / 255),
    "float.tif": (lambda p: tifffile.imwrite(p, (GRAY / 255).astype(np.float32)), GRAY / 255),
    "float_rgb.tif": (lambda p: tifffile.imwrite(p, (RGB / 255).astype(np.float32),
                                                 photometric="rgb"), RGB / 255),
    "rgb16.tif": (lambda p: tifffile.imwrite(p, RGB.astype(np.uint16) * 257, photometric="rgb"),
                  RGB / 255),
    "planar.tif": (lambda p: tifffile.imwrite(p, np.moveaxis(RGB, 2, 0), photometric="rgb",
                                              planarconfig="separate"), RGB / 255),
    "rgba.tif": (lambda p: tifffile.imwrite(p, np.dstack([RGB, GRAY]), photometric="rgb",
                                            extrasamples=["unassalpha"]), RGB / 255),
    "min_is_white.tif": (lambda p: tifffile.imwrite(p, 255 - GRAY, photometric="miniswhite"),
                         GRAY / 255),
    "palette.tif": (lambda p: tifffile.imwrite(
        p, GRAY, photometric="palette",
        colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))), GRAY / 255),
    "lzw.tif": (lambda p: Image.fromarray(RGB).save(p, compression="tiff_lzw"), RGB / 255),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modes")
    for name, (write, _) in FILES.items():
        write(folder / name)
    return folder


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_mode_and_bit_depth_reads_to_unit_floats(files, name):
    image = read_image(files / name)
    expected = FILES[name][1]
    if expected is None:  # a colour palette: its own palette's colours
        expected = np.asarray(Image.open(files / name).convert("RGB")) / 255
    assert image.dtype == np.float32 and image.shape == expected.shape
    np.testing.assert_allclose(image, expected, atol=1e-6)
    # the header agrees with the pixels, without decoding them
    assert image_size(files / name) == image.shape[:2]
    assert image_channels(files / name) == (1 if image.ndim == 2 else 3)


def test_sixteen_bit_files_keep_their_precision_and_range(tmp_path):
    values = np.linspace(46, 65329, 48).astype(np.uint16).reshape(6, 8)
    Image.fromarray(values).save(tmp_path / "g.png")
    tifffile.imwrite(tmp_path / "g.tif", values)
    for name in ("g.png", "g.tif"):
        image = read_image(tmp_path / name)
        np.testing.assert_allclose(image, values / 65535, rtol=1e-6)
        assert len(np.unique(image)) == 48  # not clipped to 1.0, not quantised to 8 bits


def test_modes_convert_gray_and_colour_either_way(files):
    gray = read_image(files / "rgb8.png", mode="L")
    luma = np.asarray(Image.fromarray(RGB).convert("L")) / 255
    assert gray.shape == (6, 8) and np.abs(gray - luma).max() <= 1 / 255
    rgb = read_image(files / "gray16.png", mode="RGB")
    assert rgb.shape == (6, 8, 3) and (rgb == rgb[..., :1]).all()
    with pytest.raises(ValueError, match="mode"):
        read_image(files / "gray8.png", mode="CMYK")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_and_tiff_orientation_give_the_image_a_viewer_shows(tmp_path, orientation):
    image = Image.fromarray(RGB)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.png", exif=exif)
    tifffile.imwrite(tmp_path / "o.tif", RGB, photometric="rgb",
                     extratags=[(274, 3, 1, orientation, True)])
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png"))) / 255
    for name in ("o.png", "o.tif"):
        np.testing.assert_allclose(read_image(tmp_path / name), shown, atol=1e-6)
        assert image_size(tmp_path / name) == shown.shape[:2]


def test_resize_in_float_and_to_uint8_round_trip(files):
    image = read_image(files / "gray8.png")
    np.testing.assert_array_equal(to_uint8(image), GRAY)  # 8-bit files are read exactly
    small = read_image(files / "rgb16.tif", size=(3, 4))
    assert small.shape == (3, 4, 3) and small.dtype == np.float32
    np.testing.assert_allclose(small, resize_image(read_image(files / "rgb16.tif"), (3, 4)))
    mask = resize_image(GRAY > 127, (12, 16), nearest=True)
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_unreadable_files_are_named_with_what_to_do(tmp_path):
    with pytest.raises(MissingImageError, match="missing.png.*does not exist"):
        read_image(tmp_path / "missing.png")
    assert issubclass(MissingImageError, FileNotFoundError)
    assert issubclass(MissingImageError, ValueError)
    with pytest.raises(ImageFileError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageFileError, match="text.png.*cannot be read"):
        read_image(tmp_path / "text.png")
    garbage_pixels_png(tmp_path / "garbage.png")
    Image.open(tmp_path / "garbage.png").verify()  # the checksums are valid ...
    with pytest.raises(ImageFileError, match="garbage.png"):
        read_image(tmp_path / "garbage.png")  # ... but every pixel is decoded
    tifffile.imwrite(tmp_path / "hdr.tif", np.full((4, 4), 3.5, np.float32))
    with pytest.raises(ImageFileError, match=r"hdr.tif.*\[3\.5, 3\.5\].*Rescale"):
        read_image(tmp_path / "hdr.tif")
    tifffile.imwrite(tmp_path / "nan.tif", np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ImageFileError, match="NaN"):
        read_image(tmp_path / "nan.tif")


def test_scan_images_says_why_entries_are_skipped(tmp_path):
    for name in ("b.png", "a.TIF", "c.gif", ".hidden.png", "notes"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    scan = scan_images(tmp_path)
    assert [p.name for p in scan.images] == ["a.TIF", "b.png"]
    assert sorted((p.name, why) for p, why in scan.skipped) == [
        (".hidden.png", "hidden"), ("c.gif", ".gif"), ("notes", "no extension"),
        ("sub", "folder")]


def test_io_and_datasets_import_no_torch():
    code = "import sys, skad._io, skad.datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
