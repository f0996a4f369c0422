"""Loaders for image anomaly-detection datasets stored as folder trees.

MVTec AD, VisA and any ``good/`` + ``<defect>/`` folder layout. Images are
returned as lazy lists of paths by default, or loaded into ``uint8`` arrays.
"""

import csv
import os
import warnings
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .._io import (
    IMAGE_EXTENSIONS,
    image_channels,
    image_size,
    read_image,
    resize_image,
    scan_images,
    to_uint8,
)

# --------------------------------------------------------------------------- helpers


def list_images(directory):
    """Image files of ``directory`` (not recursive, hidden files left out), sorted by name."""
    return scan_images(directory).images


def list_subdirs(directory):
    """Visible sub-directories of ``directory``, sorted by name."""
    return sorted(
        (p for p in Path(directory).iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _check_dir(path, argument, what):
    path = Path(path)
    if not path.is_dir():
        parent = path.parent
        if parent.is_dir():
            found = [p.name for p in list_subdirs(parent)]
            hint = f" {str(parent)!r} contains: {found}."
        else:
            hint = ""
        raise ValueError(
            f"{what} {str(path)!r} does not exist or is not a directory; check the "
            f"{argument!r} argument.{hint}"
        )
    return path


def _check_image_size(image_size):
    """Return ``None`` or a ``(height, width)`` tuple of positive ints."""
    if image_size is None:
        return None
    if isinstance(image_size, Integral) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    try:
        height, width = image_size
    except (TypeError, ValueError):
        height = width = None  # not a pair: rejected below
    if not all(
        isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in (height, width)
    ):
        raise ValueError(
            "image_size must be None, a positive int or a (height, width) pair of positive "
            f"ints; got {image_size!r}."
        )
    return int(height), int(width)


def _read_image(path, size=None, *, mode="auto"):
    """Read one image as uint8, ``(H, W)`` for gray or ``(H, W, 3)`` for colour.

    Decoded by :func:`skad._io.read_image` (every bit depth by its range,
    orientation applied), resized in float, then rounded to 8 bits.
    """
    return to_uint8(read_image(path, mode=mode, size=size))


def _read_mask(path, size=None):
    """Read one mask as a boolean ``(H, W)`` array (any non-zero pixel is anomalous)."""
    mask = (read_image(path, mode="L") > 0).astype(np.float32)
    if size is not None:
        mask = resize_image(mask, size, nearest=True)
    return mask > 0


def _image_mode(path):
    return "L" if image_channels(path) == 1 else "RGB"


def _image_hw(path):
    return image_size(path)


def _load_images(paths, image_size=None):
    """Load image files into one ``uint8`` array.

    Gray images give an array of shape ``(n, H, W)``; if any image has colour,
    all are converted to RGB and the array has shape ``(n, H, W, 3)``.

    Parameters
    ----------
    paths : sequence of str or path-like
        Image files to read, in order.

    image_size : int or tuple of (int, int), default=None
        Resize every image to ``(image_size, image_size)`` or to
        ``(height, width)`` (bilinear, antialiased when shrinking). If None,
        all images must already have the same size.

    Returns
    -------
    images : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8
        The decoded images.
    """
    paths = [os.fspath(p) for p in paths]
    size = _check_image_size(image_size)
    if not paths:
        raise ValueError("paths is empty; pass at least one image file.")
    mode = "L" if all(_image_mode(p) == "L" for p in paths) else "RGB"
    if size is None:
        sizes = {_image_hw(p) for p in paths}
        if len(sizes) > 1:
            raise ValueError(
                f"The images have different sizes {sorted(sizes)[:5]}; pass image_size=... "
                "(an int or a (height, width) pair) to resize them to a common size."
            )
        size = sizes.pop()
    shape = (len(paths), *size) if mode == "L" else (len(paths), *size, 3)
    images = np.empty(shape, dtype=np.uint8)
    for i, path in enumerate(paths):
        images[i] = _read_image(path, size, mode=mode)
    return images


def _load_masks(mask_paths, image_paths, size):
    """Boolean masks aligned with ``image_paths``; zeros where the mask path is None."""
    if size is None:
        size = _image_hw(image_paths[0])
    masks = np.zeros((len(mask_paths), *size), dtype=bool)
    for i, path in enumerate(mask_paths):
        if path is not None:
            masks[i] = _read_mask(path, size)
    return masks


def _make_bunch(
    image_paths,
    mask_paths,
    target,
    defect_type,
    *,
    return_arrays,
    image_size,
    descr,
    warn_missing=True,
):
    target = np.asarray(target, dtype=int)
    missing = int(np.sum((target == -1) & np.array([m is None for m in mask_paths], dtype=bool)))
    filenames = np.asarray([os.fspath(p) for p in image_paths], dtype=str)
    mask_paths = [None if m is None else os.fspath(m) for m in mask_paths]
    if return_arrays:
        size = _check_image_size(image_size)
        images = _load_images(filenames, size)
        masks = _load_masks(mask_paths, filenames, images.shape[1:3])
        if missing and warn_missing:
            warnings.warn(
                f"{missing} anomalous image(s) have no mask file; their masks are all False.",
                UserWarning,
                stacklevel=3,
            )
    else:
        _check_image_size(image_size)
        if image_size is not None:
            raise ValueError(
                "image_size only applies with return_arrays=True; pass return_arrays=True or "
                "leave image_size=None and resize when the images are loaded."
            )
        images = list(filenames.tolist())
        masks = mask_paths
    return Bunch(
        images=images,
        masks=masks,
        target=target,
        defect_type=np.asarray(defect_type, dtype=str),
        filenames=filenames,
        DESCR=descr,
    )


def _find_mask(mask_dir, stem, suffix):
    """First existing ``mask_dir/<stem><suffix>.<ext>`` then ``mask_dir/<stem>.<ext>``."""
    if mask_dir is None or not mask_dir.is_dir():
        return None
    for name in (stem + suffix, stem):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (mask_dir / (name + ext), mask_dir / (name + ext.upper())):
                if candidate.is_file():
                    return candidate
    return None


def _class_folders(folders, normal, mask_dir, mask_suffix):
    """Images of class folders, in order: ``(images, masks, target, defect_type)`` lists.

    The folder named ``normal`` holds normal images (defect type ``"good"``),
    every other one anomalous images of its name's defect type, whose masks
    are looked up in ``mask_dir/<defect>/`` (no masks when ``mask_dir`` is None).
    """
    images, masks, target, defect_type = [], [], [], []
    for folder in folders:
        files = list_images(folder)
        if not files:
            raise ValueError(
                f"Folder {str(folder)!r} contains no images with extensions {IMAGE_EXTENSIONS}; "
                "remove it or add images."
            )
        is_normal = folder.name == normal
        for path in files:
            images.append(path)
            if is_normal or mask_dir is None:
                masks.append(None)
            else:
                masks.append(_find_mask(mask_dir / folder.name, path.stem, mask_suffix))
            target.append(1 if is_normal else -1)
            defect_type.append("good" if is_normal else folder.name)
    return images, masks, target, defect_type


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")


# --------------------------------------------------------------------------- MVTec AD

_MVTEC_DESCR = """\
MVTec AD (Bergmann et al., CVPR 2019; IJCV 2021): industrial images of 15 object and texture
categories. ``train/good`` holds defect-free images; ``test/<defect>`` holds defect-free
(``good``) and defective images, with pixel masks in ``ground_truth/<defect>/<name>_mask.png``.
Licence: CC BY-NC-SA 4.0 (non-commercial use).
"""


def load_mvtec(root, category, split="test", *, return_arrays=False, image_size=None):
    """Load one category of the MVTec AD dataset from a local copy.

    The expected tree is ``root/category/train/good/*.png``,
    ``root/category/test/<defect>/*.png`` and
    ``root/category/ground_truth/<defect>/<name>_mask.png``. The dataset is not
    downloaded: get it from https://www.mvtec.com/company/research/datasets/mvtec-ad.

    Parameters
    ----------
    root : str or path-like
        Folder that contains the category folders (``bottle``, ``cable``, ...).

    category : str
        Category folder name, e.g. ``"bottle"``.

    split : {"train", "test"}, default="test"
        Which split to read.

    return_arrays : bool, default=False
        If False, ``images`` is a list of file paths (loaded lazily by skad
        detectors) and ``masks`` a list of mask paths (None for normal images
        and for anomalous images without a mask). If True, both are loaded
        into arrays.

    image_size : int or tuple of (int, int), default=None
        Resize images and masks to this size (only with
        ``return_arrays=True``). Required if the images differ in size.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        images : list of str or ndarray of shape (n, H, W) or (n, H, W, 3)
            Image paths, or ``uint8`` images with ``return_arrays=True``.
        masks : list of str or None, or ndarray of shape (n, H, W)
            Mask paths, or boolean masks (all False for normal images).
        target : ndarray of shape (n,)
            +1 for normal images, -1 for anomalous ones.
        defect_type : ndarray of shape (n,)
            Name of the defect folder; ``"good"`` for normal images.
        filenames : ndarray of shape (n,)
            Path of each image.
        DESCR : str
            Description of the dataset.

    See Also
    --------
    load_visa : Load a category of the VisA dataset.
    load_folder : Load any ``good/`` + ``<defect>/`` folder tree.

    Notes
    -----
    Images are ordered by defect folder (``good`` first, the others
    alphabetically) and then by file name. Arrays are decoded as in
    :func:`load_folder`.

    Examples
    --------
    >>> from skad.datasets import load_mvtec
    >>> data = load_mvtec("/data/mvtec", "bottle", split="test")  # doctest: +SKIP
    >>> len(data.images), (data.target == -1).sum()  # doctest: +SKIP
    (83, 63)
    """
    _check_split(split)
    root = _check_dir(root, "root", "MVTec root")
    if not isinstance(category, str | os.PathLike):
        raise ValueError(f"category must be a str such as 'bottle'; got {category!r}.")
    category_dir = root / category
    if not category_dir.is_dir():
        raise ValueError(
            f"Category {category!r} not found under {str(root)!r}; available categories: "
            f"{[p.name for p in list_subdirs(root)]}."
        )
    split_dir = _check_dir(category_dir / split, "split", "MVTec split folder")
    gt_dir = category_dir / "ground_truth"

    defect_dirs = list_subdirs(split_dir)
    defect_dirs.sort(key=lambda p: (p.name != "good", p.name))
    if not defect_dirs:
        raise ValueError(f"{str(split_dir)!r} has no defect folders; expected at least 'good/'.")
    return _make_bunch(
        *_class_folders(defect_dirs, "good", gt_dir, "_mask"),
        return_arrays=return_arrays,
        image_size=image_size,
        descr=_MVTEC_DESCR,
    )


# --------------------------------------------------------------------------- VisA

_VISA_DESCR = """\
VisA (Zou et al., ECCV 2022): 12 object categories, 10,821 images (9,621 normal, 1,200
anomalous) with pixel masks. Splits follow the official ``split_csv/1cls.csv`` (columns
object, split, label, image, mask; paths relative to the dataset root). The 1cls split does
not name defect types, so anomalous images have ``defect_type == "anomaly"``.
Licence: CC BY 4.0.
"""


def load_visa(root, category, split="test", *, return_arrays=False, image_size=None):
    """Load one category of the VisA dataset from a local copy.

    Rows are read from ``root/split_csv/1cls.csv`` (columns ``object, split,
    label, image, mask``; ``label`` is ``normal`` or ``anomaly``; ``image`` and
    ``mask`` are paths relative to ``root``), keeping the CSV order. The
    dataset is not downloaded: get it from https://github.com/amazon-science/spot-diff.

    Parameters
    ----------
    root : str or path-like
        VisA root folder, which contains ``split_csv/`` and the category
        folders.

    category : str
        Value of the ``object`` column, e.g. ``"candle"``.

    split : {"train", "test"}, default="test"
        Value of the ``split`` column to keep.

    return_arrays : bool, default=False
        If False, ``images`` is a list of file paths and ``masks`` a list of
        mask paths (None for normal images). If True, both are loaded into
        arrays.

    image_size : int or tuple of (int, int), default=None
        Resize images and masks to this size (only with
        ``return_arrays=True``). VisA images are large (about 1.5 Mpx), so
        pass a size when loading arrays.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        images : list of str or ndarray of shape (n, H, W, 3)
            Image paths, or ``uint8`` images with ``return_arrays=True``.
        masks : list of str or None, or ndarray of shape (n, H, W)
            Mask paths, or boolean masks (any non-zero mask pixel is
            anomalous; all False for normal images).
        target : ndarray of shape (n,)
            +1 for normal images, -1 for anomalous ones.
        defect_type : ndarray of shape (n,)
            ``"good"`` for normal images, ``"anomaly"`` otherwise.
        filenames : ndarray of shape (n,)
            Path of each image.
        DESCR : str
            Description of the dataset.

    See Also
    --------
    load_mvtec : Load a category of the MVTec AD dataset.
    load_folder : Load any ``good/`` + ``<defect>/`` folder tree.

    Examples
    --------
    >>> from skad.datasets import load_visa
    >>> data = load_visa("/data/visa", "candle", split="test")  # doctest: +SKIP
    >>> len(data.images), (data.target == -1).sum()  # doctest: +SKIP
    (200, 100)
    """
    _check_split(split)
    root = _check_dir(root, "root", "VisA root")
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise ValueError(
            f"VisA split file {str(csv_path)!r} not found; root must be the VisA folder that "
            "contains split_csv/1cls.csv (created by VisA's prepare_data script)."
        )
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {"object", "split", "label", "image", "mask"}
        if reader.fieldnames is None or not columns <= set(reader.fieldnames):
            raise ValueError(
                f"{str(csv_path)!r} must have the columns {sorted(columns)}; got "
                f"{reader.fieldnames}."
            )
        rows = list(reader)
    objects = sorted({row["object"] for row in rows})
    if category not in objects:
        raise ValueError(
            f"Category {category!r} not found in {str(csv_path)!r}; available categories: "
            f"{objects}."
        )
    rows = [row for row in rows if row["object"] == category and row["split"] == split]
    if not rows:
        raise ValueError(f"No {split!r} rows for category {category!r} in {str(csv_path)!r}.")

    images, masks, target, defect_type = [], [], [], []
    for row in rows:
        label = row["label"].strip().lower()
        if label not in ("normal", "anomaly"):
            raise ValueError(
                f"Unknown label {row['label']!r} in {str(csv_path)!r}; expected 'normal' or "
                "'anomaly'."
            )
        normal = label == "normal"
        image_path = root / row["image"]
        if not image_path.is_file():
            raise ValueError(f"Image {str(image_path)!r} listed in {str(csv_path)!r} is missing.")
        mask = (row["mask"] or "").strip()
        images.append(image_path)
        masks.append(None if normal or not mask else root / mask)
        target.append(1 if normal else -1)
        defect_type.append("good" if normal else "anomaly")
    return _make_bunch(
        images,
        masks,
        target,
        defect_type,
        return_arrays=return_arrays,
        image_size=image_size,
        descr=_VISA_DESCR,
    )


# --------------------------------------------------------------------------- generic folder

_FOLDER_DESCR = """\
Images read from a folder tree: one folder of normal images and one folder per defect type;
optional masks in ``mask_dir/<defect>/<name><mask_suffix>.<ext>``.
"""


def load_folder(
    root,
    *,
    normal="good",
    mask_dir=None,
    mask_suffix="_mask",
    return_arrays=False,
    image_size=None,
):
    """Load images from a ``good/`` + ``<defect>/`` folder tree.

    Every visible sub-folder of ``root`` is a class: the folder named
    ``normal`` holds normal images (``target == +1``), every other folder
    holds anomalous images (``target == -1``) whose defect type is the folder
    name.

    Parameters
    ----------
    root : str or path-like
        Folder that contains the class folders.

    normal : str, default="good"
        Name of the folder of normal images.

    mask_dir : str or path-like, default=None
        Folder with one sub-folder of masks per defect type; a relative path
        is taken relative to ``root``. The mask of ``root/<defect>/<name>.<ext>``
        is ``mask_dir/<defect>/<name><mask_suffix>.<ext2>`` or, failing that,
        ``mask_dir/<defect>/<name>.<ext2>`` (any supported extension). If
        ``mask_dir`` lies inside ``root`` it is not read as a defect folder.
        If None, no masks are read.

    mask_suffix : str, default="_mask"
        Suffix of mask file names (the MVTec AD convention).

    return_arrays : bool, default=False
        If False, ``images`` is a list of file paths and ``masks`` a list of
        mask paths (None for normal images and where no mask exists). If
        True, both are loaded into arrays.

    image_size : int or tuple of (int, int), default=None
        Resize images and masks to this size (only with
        ``return_arrays=True``). Required if the images differ in size.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        images : list of str or ndarray of shape (n, H, W) or (n, H, W, 3)
            Image paths, or ``uint8`` images with ``return_arrays=True``.
        masks : list of str or None, or ndarray of shape (n, H, W)
            Mask paths, or boolean masks (all False for normal images).
        target : ndarray of shape (n,)
            +1 for normal images, -1 for anomalous ones.
        defect_type : ndarray of shape (n,)
            Name of the image's folder; ``"good"`` for normal images whatever
            ``normal`` is.
        filenames : ndarray of shape (n,)
            Path of each image.
        DESCR : str
            Description of the dataset.

    See Also
    --------
    load_mvtec : Load a category of the MVTec AD dataset.
    load_visa : Load a category of the VisA dataset.

    Notes
    -----
    Supported extensions are png, jpg, jpeg, bmp, tif, tiff and webp (any case). With
    ``return_arrays=True`` every file is decoded by skad's image reader, as the detectors
    read paths: 16-bit, 12-bit and float TIFF images are mapped to 0-255 by the range of
    their bit depth (not clipped, nor stretched by each image's maximum), palette and RGBA
    images to RGB, and the EXIF orientation is applied (to masks too).
    Images are ordered by folder (the normal folder first, then the defect
    folders alphabetically) and then by file name. Hidden files and folders
    are ignored.

    Examples
    --------
    >>> from skad.datasets import load_folder
    >>> data = load_folder("/data/my_parts", mask_dir="ground_truth")  # doctest: +SKIP
    >>> sorted(set(data.defect_type))  # doctest: +SKIP
    ['crack', 'good', 'scratch']
    """
    root = _check_dir(root, "root", "Folder")
    if mask_dir is not None:
        mask_dir = Path(mask_dir)
        if not mask_dir.is_absolute():
            mask_dir = root / mask_dir
        mask_dir = _check_dir(mask_dir, "mask_dir", "Mask folder")
    subdirs = [
        p for p in list_subdirs(root) if mask_dir is None or p.resolve() != mask_dir.resolve()
    ]
    names = [p.name for p in subdirs]
    if normal not in names:
        raise ValueError(
            f"No folder of normal images {normal!r} in {str(root)!r}; found folders {names}. "
            "Pass normal=<folder name>."
        )
    subdirs.sort(key=lambda p: (p.name != normal, p.name))
    return _make_bunch(
        *_class_folders(subdirs, normal, mask_dir, mask_suffix),
        return_arrays=return_arrays,
        image_size=image_size,
        descr=_FOLDER_DESCR,
        warn_missing=mask_dir is not None,
    )
