"""Image files: what skad reads as an image and how, without importing torch.

:func:`read_image` is skad's one decoder of image files: the detectors' lazy
path reader, the dataset loaders, the texture folders and the CLI all read
files through it, so a file means the same pixels everywhere. It returns
float32 in [0, 1], mapping each bit depth by its range:

- 1-bit images to {0, 1}; 8-bit to ``v / 255``; 16-bit to ``v / 65535``;
  TIFF files of other integer depths (12-bit, ...) by their
  ``BitsPerSample``, ``v / (2**bits - 1)``; signed integers by their dtype's
  range;
- floating-point images (float TIFF) as they are: they must lie in [0, 1];
- palette images through their palette, CMYK and YCbCr to RGB; alpha
  channels are dropped (the pixels keep their colour); TIFF
  ``MinIsWhite`` images are inverted;
- the EXIF / TIFF orientation tag is applied, so the array is the image as a
  viewer shows it.

Grayscale images (including palette images whose palette is gray) give
``(H, W)``, colour images ``(H, W, 3)``, unless a ``mode`` asks for one of
them. TIFF files are decoded with ``tifffile`` (every bit depth, float and
16-bit colour), and with Pillow when ``tifffile`` lacks the file's codec.

:func:`scan_images` lists the image files of a folder and says why the
other entries were skipped; :data:`IMAGE_EXTENSIONS` is the list of endings
read as images everywhere in skad.
"""

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderScan",
    "ImageFileError",
    "MissingImageError",
    "image_channels",
    "image_size",
    "read_image",
    "resize_image",
    "scan_images",
    "to_uint8",
]

#: File name endings read as images, everywhere in skad (folders, textures, the CLI).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_TIFF = (".tif", ".tiff")
_ORIENTATION_TAG = 0x0112
# Float images may overshoot [0, 1] by rounding; beyond this they are refused.
_FLOAT_TOLERANCE = 1e-4
# ITU-R 601 luma, as PIL's convert("L")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageFileError(ValueError):
    """An image file that cannot be decoded (the message names the file)."""


class MissingImageError(ImageFileError, FileNotFoundError):
    """An image file that does not exist; both a ValueError and a FileNotFoundError."""


# ------------------------------------------------------------------------ reading


def read_image(path, *, mode="auto", size=None):
    """Decode an image file to float32 in [0, 1].

    Parameters
    ----------
    path : str or path-like
        The image file (any format Pillow reads; TIFF through ``tifffile``).
    mode : {"auto", "L", "RGB"}, default="auto"
        ``"auto"`` keeps grayscale images ``(H, W)`` and colour images
        ``(H, W, 3)``; ``"L"`` converts colour to gray (ITU-R 601 luma);
        ``"RGB"`` repeats gray into three channels.
    size : tuple of (int, int), default=None
        ``(height, width)`` to resize to (bilinear, antialiased when
        shrinking); None keeps the file's size.

    Returns
    -------
    image : ndarray of shape (H, W) or (H, W, 3), dtype float32
        Values in [0, 1], each bit depth mapped by its range (see the module
        docstring), orientation applied.

    Raises
    ------
    MissingImageError
        If ``path`` does not exist.
    ImageFileError
        If the file is not an image skad can decode, or its pixel data is
        damaged (everything is decoded, so a damaged file fails here).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> from skad._io import read_image
    >>> path = os.path.join(tempfile.mkdtemp(), "gray16.png")
    >>> Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    >>> read_image(path)
    array([[0., 1.]], dtype=float32)
    """
    if mode not in ("auto", "L", "RGB"):
        raise ValueError(f"mode must be 'auto', 'L' or 'RGB'; got {mode!r}.")
    path = _check_file(path)
    try:
        image, orientation = _decode(path)
    except ImageFileError:
        raise
    except Exception as exc:  # decoders raise many kinds (OSError, SyntaxError, zlib...)
        raise ImageFileError(
            f"image file {path!r} cannot be read as an image ({type(exc).__name__}: {exc}); "
            "replace or remove it."
        ) from exc
    image = _orient(image, orientation)
    if mode == "L" and image.ndim == 3:
        image = np.tensordot(image, _LUMA, axes=([2], [0])).astype(np.float32)
    elif mode == "RGB" and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if size is not None:
        image = resize_image(image, size)
    return np.ascontiguousarray(image, dtype=np.float32)


def image_size(path):
    """``(height, width)`` of an image file as :func:`read_image` returns it, from its header.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    size : tuple of (int, int)
    """
    return _probe(_check_file(path))[0]


def image_channels(path):
    """1 for a grayscale image file (gray palettes included), 3 for colour, from its header.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    channels : {1, 3}
    """
    return _probe(_check_file(path))[1]


def to_uint8(image):
    """Float images in [0, 1] to uint8 ``round(255 * x)``.

    Parameters
    ----------
    image : ndarray of float

    Returns
    -------
    ndarray of dtype uint8, same shape
    """
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize_image(image, size, *, nearest=False):
    """Resize a float32 image ``(H, W)`` or ``(H, W, C)`` to ``size = (height, width)``.

    Bilinear (antialiased when shrinking, as Pillow does), or nearest
    neighbour for masks; computed in float32 per channel, so no precision is
    lost to 8-bit rounding.

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, C)
    size : tuple of (int, int)
    nearest : bool, default=False

    Returns
    -------
    ndarray of shape (height, width) or (height, width, C), dtype float32
    """
    height, width = (int(s) for s in size)
    image = np.asarray(image, dtype=np.float32)
    if image.shape[:2] == (height, width):
        return image
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((width, height), method),
                      dtype=np.float32) for p in planes]
    return out[0] if image.ndim == 2 else np.stack(out, axis=2)


def _check_file(path):
    path = os.fspath(path)
    path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if not os.path.exists(path):
        raise MissingImageError(f"image file {path!r} does not exist; check the path.")
    if os.path.isdir(path):
        raise ImageFileError(f"{path!r} is a folder, not an image file.")
    return path


def _is_tiff(path):
    return os.path.splitext(path)[1].lower() in _TIFF


def _decode(path):
    """``(float32 image (H, W) or (H, W, 3) in [0, 1], orientation code)``."""
    if _is_tiff(path):
        try:
            return _decode_tifffile(path)
        except _NeedsPillow:
            pass
    with Image.open(path) as im:
        # decode first: a failed decode inside getexif() would leave blank pixels behind
        im.load()
        orientation = _pil_orientation(im)
        return _pil_pixels(im, path), orientation


# ---------------------------------------------------------------- Pillow images


def _pil_orientation(im):
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unreadable
        return 1
    return value if value in range(1, 9) else 1


def _pil_bits(im):
    """Bits per sample recorded by a TIFF read through Pillow, else None."""
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) and 1 <= bits <= 32 else None


def _gray_palette(im):
    """Whether every entry of a palette image's palette is gray (read from the header)."""
    palette = im.getpalette("RGB")
    if not palette:
        return False
    rgb = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _pil_pixels(im, path):
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.float32)
    if mode in ("L", "LA", "La"):
        im = im.convert("LA") if mode == "La" else im
        return _unit(np.asarray(im)[..., 0] if im.mode == "LA" else np.asarray(im), path)
    if mode.startswith("I;16"):
        return _unit(np.asarray(im).astype(np.uint16), path, bits=_pil_bits(im) or 16)
    if mode == "I":
        return _unit(np.asarray(im), path, bits=_pil_bits(im) or 16)
    if mode == "F":
        return _unit(np.asarray(im), path)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        rgb = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))[..., :3]
        return _unit(rgb[..., 0] if _gray_palette(im) else rgb, path)
    if mode in ("RGBA", "RGBa", "RGBX"):
        im = im.convert("RGBA") if mode == "RGBa" else im
        return _unit(np.asarray(im)[..., :3], path)
    if mode != "RGB":
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 16-bit packed modes
    return _unit(np.asarray(im), path)


def _unit(values, path, bits=None):
    """Pixel values of any dtype to float32 in [0, 1] by the range of their bit depth."""
    values = np.asarray(values)
    if values.dtype.kind == "b":
        return values.astype(np.float32)
    if values.dtype.kind == "u":
        bits = bits or 8 * values.dtype.itemsize
        if bits == 8:
            # float32 division: the same numbers as an uint8 array given to a detector
            return values.astype(np.float32) / np.float32(255.0)
        high = float(values.max()) if values.size else 0.0
        if high > 2.0**bits - 1:
            raise ImageFileError(
                f"image file {path!r} declares {bits}-bit samples but holds values up to "
                f"{high:.0f}; the file is damaged."
            )
        return (values.astype(np.float64) / (2.0**bits - 1)).astype(np.float32)
    if values.dtype.kind == "i":
        if bits is not None and values.dtype.itemsize == 4 and (values >= 0).all():
            # Pillow's 32-bit "I" mode holding unsigned 16-bit (or BitsPerSample) samples
            return _unit(values.astype(np.uint32), path, bits=bits)
        info = np.iinfo(values.dtype)
        return ((values.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    if values.dtype.kind == "f":
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise ImageFileError(
                f"float image file {path!r} holds NaN or inf; skad reads float images as "
                "intensities in [0, 1]. Replace those pixels."
            )
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
            raise ImageFileError(
                f"float image file {path!r} holds values in [{lo:.4g}, {hi:.4g}]; skad reads "
                "float images as intensities in [0, 1]. Rescale it to [0, 1] (or save it as "
                "8- or 16-bit integers)."
            )
        return np.clip(values, 0.0, 1.0)
    raise ImageFileError(f"image file {path!r} holds {values.dtype} pixels, not an image.")


# ----------------------------------------------------------------------- TIFF files


class _NeedsPillow(Exception):
    """tifffile cannot decode this TIFF (a codec it lacks); Pillow may."""


def _decode_tifffile(path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            try:
                values = page.asarray()
            except NotImplementedError:  # packed 12-bit (...) samples need imagecodecs
                values = _unpack_samples(path, page)
            axes = page.axes
            orientation = _tiff_orientation(page)
            info = (int(page.photometric), int(page.bitspersample), page.extrasamples,
                    page.colormap)
    except ValueError as exc:
        if "imagecodecs" in str(exc):
            raise _NeedsPillow from exc
        raise
    except tifffile.TiffFileError as exc:
        raise _NeedsPillow from exc
    return _tiff_pixels(values, axes, *info, path), orientation


def _unpack_samples(path, page):
    """Samples of a strip-organised TIFF page whose bit depth is not a whole byte (12-bit).

    tifffile leaves those to the optional imagecodecs package; uncompressed
    and Deflate strips are unpacked here (most significant bit first, rows
    padded to whole bytes, as the TIFF specification says).
    """
    import zlib

    bits, compression = int(page.bitspersample), int(page.compression)
    if page.is_tiled or compression not in (1, 8, 32946) or int(page.predictor) != 1:
        raise ImageFileError(
            f"TIFF file {path!r} has {bits}-bit samples compressed as {page.compression.name}, "
            "which skad decodes only with the imagecodecs package: pip install imagecodecs, "
            "or save the image uncompressed or as 16-bit."
        )
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    per_row = page.imagewidth * page.samplesperpixel // planes
    row_bytes = (per_row * bits + 7) // 8
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.uint32)
    with open(path, "rb") as handle:
        strips = []
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            handle.seek(offset)
            data = handle.read(count)
            strips.append(zlib.decompress(data) if compression != 1 else data)
    raw = np.frombuffer(b"".join(strips), dtype=np.uint8)
    n_rows = planes * page.imagelength
    raw = raw[: n_rows * row_bytes].reshape(n_rows, row_bytes)
    bitplane = np.unpackbits(raw, axis=1)[:, : per_row * bits].reshape(n_rows, per_row, bits)
    values = (bitplane.astype(np.uint32) @ weights).astype(np.uint16)
    return values.reshape(page.shape)


def _tiff_orientation(page):
    tag = page.tags.get(274)
    value = int(tag.value) if tag is not None else 1
    return value if value in range(1, 9) else 1


def _tiff_layout(values, axes, path):
    """``values`` as ``(H, W)`` or ``(H, W, S)`` from tifffile's axes of one page."""
    axes = axes.replace("Q", "")  # tifffile's placeholder for length-1 dimensions
    keep = [i for i, a in enumerate(axes) if a not in "YXS"]
    if any(values.shape[i] != 1 for i in keep) or not {"Y", "X"} <= set(axes):
        raise ImageFileError(
            f"TIFF file {path!r} holds a {values.ndim}-D {axes} array of shape {values.shape}, "
            "not a 2-D image; save one image per file."
        )
    values = values.reshape([n for i, n in enumerate(values.shape) if i not in keep])
    axes = "".join(a for a in axes if a in "YXS")
    return np.moveaxis(values, [axes.index(a) for a in "YXS" if a in axes],
                       range(len(axes)))


def _tiff_pixels(values, axes, photometric, bits, extrasamples, colormap, path):
    values = _tiff_layout(values, axes, path)
    if photometric == 3 and colormap is not None:  # palette
        rgb = np.asarray(colormap, dtype=np.float64).T / 65535.0
        image = rgb[np.clip(values if values.ndim == 2 else values[..., 0], 0, len(rgb) - 1)]
        return image[..., 0].astype(np.float32) if np.allclose(image, image[..., :1]) \
            else image.astype(np.float32)
    is_int = values.dtype.kind in "ui"
    image = _unit(values, path, bits=bits if is_int and values.dtype.kind == "u" else None)
    samples = 1 if image.ndim == 2 else image.shape[2]
    if photometric in (0, 1):  # MinIsWhite, MinIsBlack: the first sample is the gray level
        gray = image if samples == 1 else image[..., 0]
        return 1.0 - gray if photometric == 0 else gray
    if photometric == 5 and samples >= 4:  # separated: CMYK
        cmy, k = image[..., :3], image[..., 3:4]
        return ((1.0 - cmy) * (1.0 - k)).astype(np.float32)
    if photometric == 2 and samples >= 3:  # RGB, extra samples (alpha) dropped
        return image[..., :3]
    if samples == 1:
        return image
    raise _NeedsPillow  # YCbCr, CIELab...: Pillow converts them


# ------------------------------------------------------------------------ headers


def _probe(path):
    """``((height, width), channels)`` of an image file without decoding its pixels."""
    try:
        if _is_tiff(path):
            try:
                return _probe_tifffile(path)
            except _NeedsPillow:
                pass
        with Image.open(path) as im:
            width, height = im.size
            orientation = _pil_orientation(im)
            if im.mode in ("P", "PA"):
                channels = 1 if _gray_palette(im) else 3
            else:
                channels = 1 if im.mode in ("1", "L", "LA", "La", "I", "F") \
                    or im.mode.startswith("I;16") else 3
    except Exception as exc:
        raise ImageFileError(
            f"image file {path!r} cannot be read as an image ({type(exc).__name__}: {exc}); "
            "replace or remove it."
        ) from exc
    if orientation >= 5:  # transposed or rotated by 90 degrees
        height, width = width, height
    return (height, width), channels


def _probe_tifffile(path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = dict(zip(page.axes, page.shape))
            orientation = _tiff_orientation(page)
            photometric = int(page.photometric)
            colormap = page.colormap
    except tifffile.TiffFileError as exc:
        raise _NeedsPillow from exc
    if "Y" not in shape or "X" not in shape:
        raise _NeedsPillow
    height, width = shape["Y"], shape["X"]
    if photometric == 3 and colormap is not None:
        rgb = np.asarray(colormap)
        channels = 1 if (rgb == rgb[:1]).all() else 3
    else:
        channels = 1 if photometric in (0, 1) else 3
    if orientation >= 5:
        height, width = width, height
    return (int(height), int(width)), channels


# ---------------------------------------------------------------------- orientation


def _orient(image, orientation):
    """Apply an EXIF / TIFF orientation code (1-8) to an ``(H, W[, C])`` array."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return np.swapaxes(image, 0, 1)
    if orientation == 6:
        return np.rot90(image, k=-1)
    if orientation == 7:
        return np.swapaxes(image, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(image, k=1)
    return image


# ------------------------------------------------------------------------- folders


class FolderScan(NamedTuple):
    """What :func:`scan_images` found in a folder.

    Parameters
    ----------
    images : list of pathlib.Path
        Image files (visible, with an ending of :data:`IMAGE_EXTENSIONS`),
        sorted by name.
    skipped : list of tuple (pathlib.Path, str)
        The other entries and why: ``"hidden"``, ``"folder"``, or the file's
        ending (``".gif"``, ``"no extension"``).
    """

    images: list
    skipped: list


def scan_images(directory):
    """The image files directly inside ``directory`` and the entries skipped, with reasons.

    Parameters
    ----------
    directory : str or path-like

    Returns
    -------
    FolderScan
    """
    images, skipped = [], []
    for entry in sorted(Path(directory).iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append((entry, "hidden"))
        elif entry.is_dir():
            skipped.append((entry, "folder"))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            images.append(entry)
        else:
            skipped.append((entry, entry.suffix.lower() or "no extension"))
    return FolderScan(images, skipped)
