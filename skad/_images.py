"""Validation and lazy batch loading of the inputs a detector accepts.

A detector sees one of three kinds of ``X``:

- an image array ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)`` with
  ``C`` in {1, 3}, uint8 or float in [0, 1];
- a sequence of image file paths, read lazily batch by batch;
- a tabular array ``(n_samples, n_features)``.

Images are handed to the networks as float32 tensors ``(b, 3, S, S)`` in
[0, 1]; normalisation belongs to the network (so that synthesis and saliency
work in image space).
"""

import os
from numbers import Integral

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ._io import ImageFileError, read_image
from ._io import image_size as file_image_size

__all__ = [
    "ImageBatchDataset",
    "ImageInput",
    "check_labels",
    "check_masks",
    "check_tabular",
    "collate_batch",
    "is_path_sequence",
    "is_tabular",
    "iter_image_batches",
    "resize_images",
]



def is_tabular(X):
    """Whether ``X`` is a 2-D numeric array of tabular features."""
    if sp.issparse(X):
        return True  # so that validate_data explains that sparse input is not supported
    return not is_path_sequence(X) and _ndim(X) == 2


def check_tabular(X):
    """Refuse tabular data that scikit-learn's validation would refuse without naming ``X``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Dense tabular data (sparse input is left to ``validate_data``).
    """
    if sp.issparse(X):
        return
    array = _as_array(X, "X", fix="Pass rows of equal length.")
    if array.dtype.kind == "c":
        raise ValueError(f"X has complex dtype {array.dtype}. Complex data not supported: "
                         "tabular features must be real; pass X.real or np.abs(X).")
    if array.dtype.kind == "O":
        try:
            np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"X holds non-numeric values ({exc}); tabular data must be numeric "
                "(n_samples, n_features).") from None
    elif array.dtype.kind not in "biuf":
        raise ValueError(
            f"X has dtype {array.dtype}; tabular data must be numeric (n_samples, n_features)."
        )
    if array.ndim == 2 and 0 in array.shape:
        what = "sample" if array.shape[0] == 0 else "feature"
        raise ValueError(
            f"X is empty: found array with 0 {what}(s) (shape={array.shape}) while a minimum "
            f"of 1 is required; pass at least one sample and one feature."
        )


def _ndim(X):
    # np.asarray rather than np.ndim: array-likes need not implement __array_function__.
    if isinstance(X, np.ndarray):
        return X.ndim
    try:
        return np.asarray(X).ndim
    except (ValueError, TypeError):
        return -1  # ragged: ImageInput says so


def is_path_sequence(X):
    """True for a non-empty list, tuple, 1-D array or Series of str or path-like items."""
    if isinstance(X, (str, bytes, os.PathLike)):
        return False
    if not isinstance(X, (list, tuple)):
        if not hasattr(X, "__array__"):
            return False
        X = np.asarray(X)  # ndarray or pandas Series of paths
        if X.ndim != 1 or X.dtype.kind not in "UO":
            return False
    return len(X) > 0 and all(_is_path(p) for p in X)


def _is_path(p):
    return isinstance(p, (str, os.PathLike))


def _as_path(p):
    """A plain ``str`` (not ``np.str_``, whose repr would leak into messages)."""
    p = os.fspath(p)
    return os.fsdecode(p) if isinstance(p, bytes) else str(p)


_IMAGES_FIX = ("Pass images of one size as one array (resize them first), or a list of "
               "image file paths, which may differ in size.")


def _as_array(X, argname, fix=_IMAGES_FIX):
    """``np.asarray(X)``, with a message naming ``argname`` for ragged or odd inputs."""
    try:
        return np.asarray(X)
    except (ValueError, TypeError) as exc:
        shapes = _item_shapes(X)
        if shapes:
            raise ValueError(
                f"{argname} is a ragged sequence: its items have different shapes "
                f"({', '.join(map(str, shapes[:4]))}{', ...' if len(shapes) > 4 else ''}). "
                + fix
            ) from None
        raise ValueError(f"{argname} cannot be read as an array ({exc}). " + fix) from None


def _item_shapes(X):
    try:
        return list(dict.fromkeys(np.shape(item) if not _is_path(item) else "a path"
                                  for item in X))
    except (TypeError, ValueError):
        return []


#: numpy dtypes whose batches torch reads as they are; others are converted per batch
_TORCH_NATIVE = {np.dtype(t) for t in (np.uint8, np.bool_, np.float32, np.float64)}


class ImageInput:
    """A validated image input: an array or a sequence of paths.

    The array is never copied whole nor written to; batches are converted on
    demand.

    Parameters
    ----------
    X : ndarray or sequence of str
        The images, see the module docstring.
    argname : str, default="X"
        Name used in error messages.
    """

    def __init__(self, X, argname="X"):
        self.argname = argname
        if is_path_sequence(X):
            self.paths = [_as_path(p) for p in X]
            self.array = None
            self.layout = "paths"
            return
        if isinstance(X, (str, bytes, os.PathLike)):
            path = _as_path(X)
            raise ValueError(
                f"{argname} is a single path {path!r}; pass a list of image paths, e.g. "
                f"[{path!r}]."
            )
        if isinstance(X, (list, tuple)) and any(_is_path(p) for p in X):
            raise ValueError(
                f"{argname} mixes image file paths with other items; pass either a list of "
                "paths or one image array."
            )
        array = _as_array(X, argname)
        self.array = _check_image_array(array, argname)
        self.paths = None
        self.layout = _layout(array, argname)

    def __len__(self):
        return len(self.paths) if self.paths is not None else self.array.shape[0]

    @property
    def spatial_shape(self):
        """``(H, W)`` shared by every image, or ``None`` for paths."""
        if self.array is None:
            return None
        if self.layout == "NCHW":
            return tuple(self.array.shape[2:4])
        return tuple(self.array.shape[1:3])

    def original_size(self, index):
        """``(H, W)`` of one image at its stored resolution."""
        shape = self.spatial_shape
        if shape is not None:
            return shape
        return self._read(index, file_image_size)

    def load(self, indices, size=None):
        """Load images as float32 ``(b, 3, S, S)`` in [0, 1].

        Parameters
        ----------
        indices : sequence of int
            Which images.
        size : int or None
            Square side to resize to (antialiased); ``None`` keeps the stored
            resolution (array inputs only).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self.array is not None:
            part = np.ascontiguousarray(self.array[indices])
            if part.dtype not in _TORCH_NATIVE:
                # other byte orders, float16/float128, other integers: converted per batch
                part = part.astype(np.float64 if part.dtype.kind == "f" else np.float32)
                part = part / np.float32(255.0) if self.array.dtype.kind in "iu" else part
            batch = torch.from_numpy(part)
            if self.layout == "NHW":
                batch = batch[:, None]
            elif self.layout == "NHWC":
                batch = batch.permute(0, 3, 1, 2)
            batch = _to_unit_float(batch)
            if size is not None and tuple(batch.shape[-2:]) != (size, size):
                batch = _resize(batch, size)
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
        else:
            if size is None:
                raise ValueError("image paths can only be loaded with a target size.")
            # each image gets its three channels before stacking: folders mix gray and colour
            batch = torch.stack([self._load_path(i, size) for i in indices])
        # channels-last convolutions are much faster on CPU (1.4x forward, 1.7x
        # forward+backward for EfficientNet-Lite0 at 128 px on 2 cores)
        return batch.contiguous(memory_format=torch.channels_last)

    def _read(self, index, reader):
        try:
            return reader(self.paths[index])
        except ImageFileError as exc:
            raise type(exc)(f"{self.argname}[{index}]: {exc}") from exc.__cause__

    def _load_path(self, index, size):
        """One image file as float32 ``(3, size, size)``, as an array image would be loaded."""
        image = torch.from_numpy(self._read(index, read_image))
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        if tuple(image.shape[-2:]) != (size, size):
            image = _resize(image[None], size)[0]
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _resize(batch, size):
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp_(0.0, 1.0)


def _layout(array, argname):
    if array.ndim == 3:
        return "NHW"
    if array.shape[-1] in (1, 3):
        return "NHWC"
    return "NCHW"


def _check_image_array(array, argname):
    """Validate an image array up front; messages name ``argname`` and say what to pass."""
    if array.dtype == object:
        raise ValueError(
            f"{argname} has dtype object; pass a numeric image array or a list of "
            "image file paths."
        )
    if array.size == 0 or (array.ndim >= 1 and array.shape[0] == 0):
        raise ValueError(f"{argname} is empty (shape {array.shape}); pass at least one image.")
    if array.ndim == 4 and array.shape[-1] not in (1, 3) and array.shape[1] not in (1, 3):
        raise ValueError(
            f"{argname} has shape {array.shape}: images need 1 or 3 channels, either "
            "last (n, H, W, C) or second (n, C, H, W). Convert RGBA to RGB, or pass "
            "grayscale images as (n, H, W)."
        )
    if array.ndim not in (3, 4):
        raise ValueError(
            f"{argname} must be images of shape (n, H, W), (n, H, W, C) or (n, C, H, W), "
            f"a list of image paths, or tabular data (n_samples, n_features); got an array "
            f"with {array.ndim} dimension(s), shape {array.shape}. For a single image use "
            f"{argname}[None]."
        )
    kind = array.dtype.kind
    if kind == "c":
        raise ValueError(
            f"{argname} has complex dtype {array.dtype}; images are real: pass np.abs("
            f"{argname}) or {argname}.real, as uint8 or floats in [0, 1]."
        )
    if kind not in "uifb":
        raise ValueError(
            f"{argname} has dtype {array.dtype}; pass uint8 images or floats in [0, 1]."
        )
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(
                f"{argname} contains NaN or inf; replace or drop those images first, e.g. "
                f"np.nan_to_num({argname})."
            )
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images in {argname} must lie in [0, 1]; got values in "
                f"[{lo:.4g}, {hi:.4g}]. Pass uint8 images, or divide 0-255 floats by 255."
            )
    elif array.dtype != np.uint8 and kind in "ui":
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer images in {argname} must lie in [0, 255]; got [{lo}, {hi}]. "
                "An array does not say its bit depth: pass 8-bit values, or floats in [0, 1] "
                f"(e.g. {argname} / 65535 for 16-bit images)."
            )
    return array


def _to_unit_float(batch):
    if batch.dtype == torch.bool:
        return batch.float()
    if batch.dtype.is_floating_point:
        return batch.float()
    return batch.float().div_(255.0)


def check_labels(y, n_samples):
    """Validate ``y`` in predict's codes; return internal targets (1 = anomaly).

    Parameters
    ----------
    y : array-like of shape (n_samples,) or None
        -1 for a known anomaly, +1 for an unlabelled sample assumed normal.
    n_samples : int
        Number of samples in X.

    Returns
    -------
    target : ndarray of shape (n_samples,), dtype int64
        1 where ``y == -1``, else 0.
    """
    if y is None:
        return np.zeros(n_samples, dtype=np.int64)
    y = _as_array(y, "y", fix="Pass one label per sample: -1 (known anomaly) or +1.")
    if y.dtype.kind == "c":
        raise ValueError(
            f"y has complex dtype {y.dtype}; " + _codes_message(np.unique(y)[:6].tolist()))
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional (n_samples,); got shape {y.shape}.")
    if y.shape[0] != n_samples:
        raise ValueError(
            f"y has {y.shape[0]} labels but X has {n_samples} samples; pass one label per "
            "sample (or y=None when no anomaly is labelled)."
        )
    if y.dtype.kind == "b" or not np.issubdtype(y.dtype, np.number):
        codes = set(np.unique(y).tolist()) if y.dtype.kind in "biuf" else {repr(v) for v in y[:5]}
        raise ValueError(_codes_message(sorted(codes, key=str)))
    finite = np.isfinite(y.astype(float))
    if not finite.all():
        raise ValueError("y contains NaN or inf; " + _codes_message(["nan"]))
    values = np.unique(y)
    if not set(values.tolist()) <= {-1, 1}:
        raise ValueError(_codes_message(values.tolist()))
    target = (y == -1).astype(np.int64)
    if target.sum() * 2 > n_samples:
        raise ValueError(
            f"{int(target.sum())} of {n_samples} labels in y are -1 (anomaly): more than half. "
            "skad expects mostly unlabelled/normal data with a few labelled anomalies, coded "
            "-1 = known anomaly, +1 = unlabelled (assumed normal), as predict's output. If your "
            "codes are the other way round, pass y=-y."
        )
    return target


def _codes_message(codes):
    return (
        f"y must use predict's codes: -1 = known anomaly, +1 = unlabelled (assumed normal); "
        f"got values {codes}. For 0/1 labels with 1 = anomaly, pass y = np.where(labels == 1, "
        "-1, 1)."
    )


def check_masks(masks, images, target):
    """Validate the defect masks of the labelled anomalies.

    Parameters
    ----------
    masks : array-like of shape (n_samples, H, W)
        Binary masks (bool or 0/1), 1 = anomalous pixel. Only the rows of the
        labelled anomalies (``target == 1``) are used and checked; the others
        may hold anything of the right shape (e.g. empty masks).
    images : ImageInput
        The validated images; array images fix ``(H, W)``, image paths accept
        any ``(H, W)`` (masks are resized to the network's input like images).
    target : ndarray of shape (n_samples,)
        Internal targets, 1 = labelled anomaly.

    Returns
    -------
    rows : ndarray of shape (k,), dtype int64
        Indices of the labelled anomalies.
    masks : ndarray of shape (k, H, W), dtype bool
        Their masks.
    """
    if not isinstance(images, ImageInput):
        raise ValueError(
            "masks are defect masks of images; this detector was given tabular data. Pass "
            "images (n, H, W[, C]) or image paths, or masks=None."
        )
    masks = np.asarray(masks)
    n = len(images)
    if masks.ndim != 3 or masks.shape[0] != n:
        raise ValueError(
            f"masks must have shape (n_samples, H, W) = ({n}, H, W), one mask per image of X; "
            f"got shape {masks.shape}. Squeeze a channel axis with masks[..., 0] or "
            "masks[:, 0]."
        )
    shape = images.spatial_shape
    if shape is not None and masks.shape[1:] != shape:
        raise ValueError(
            f"masks have size {masks.shape[1:]} but the images of X are {shape}; pass masks "
            "at the images' resolution."
        )
    rows = np.flatnonzero(np.asarray(target) == 1)
    used = masks[rows]
    if used.dtype.kind not in "biuf":
        raise ValueError(f"masks have dtype {masks.dtype}; pass bool or 0/1 masks.")
    values = np.unique(used)
    if used.dtype.kind != "b" and not set(values.tolist()) <= {0, 1}:
        raise ValueError(
            f"masks must be binary (bool or 0/1); the labelled anomalies' masks hold values "
            f"{values[:6].tolist()}{'...' if len(values) > 6 else ''}. For 0/255 images pass "
            "masks > 0."
        )
    return rows, used.astype(bool)


class ImageBatchDataset(torch.utils.data.Dataset):
    """A map-style dataset that loads whole batches at once.

    Indices are either ints (inference: the stored target is returned) or
    ``(index, target)`` pairs chosen by a training sampler, so a sampler can
    ask for an unlabelled image to be turned into a pseudo-anomaly.

    Parameters
    ----------
    source : ImageInput or torch.Tensor
        Images (loaded and resized per batch) or tabular rows.
    target : ndarray of shape (n,)
        Internal targets.
    image_size : int or None
        Square side for images.
    masks : tuple (rows, masks) or None
        Masks of some images, as returned by :func:`check_masks`; they are
        resized once to ``image_size`` (antialiased, so edges become soft) and
        training batches then return ``(X, (target, masks))`` with masks
        ``(b, 1, S, S)``, zero for the other images.
    """

    def __init__(self, source, target, image_size=None, masks=None):
        self.source = source
        self.target = torch.as_tensor(np.asarray(target), dtype=torch.float32)
        self.image_size = image_size
        self.masks = None
        if masks is not None:
            rows, stack = masks
            stack = torch.from_numpy(np.ascontiguousarray(stack)).float()[:, None]
            if image_size is not None and tuple(stack.shape[-2:]) != (image_size, image_size):
                stack = F.interpolate(stack, size=(image_size, image_size), mode="bilinear",
                                      antialias=True, align_corners=False).clamp_(0.0, 1.0)
            lookup = np.full(len(self.target), -1, dtype=np.int64)
            lookup[np.asarray(rows, dtype=np.int64)] = np.arange(len(rows))
            self.masks = (lookup, stack)

    def __len__(self):
        return len(self.target)

    def __getitem__(self, item):
        X, y = self.__getitems__([item])
        return X[0], y[0]

    def __getitems__(self, items):
        training = len(items) and not isinstance(items[0], (Integral, np.integer))
        if training:
            index = [int(i) for i, _ in items]
            target = torch.tensor([float(t) for _, t in items])
        else:
            index = [int(i) for i in items]
            target = self.target[index]
        if isinstance(self.source, torch.Tensor):
            return self.source[index], target
        X = self.source.load(index, self.image_size)
        if training and self.masks is not None:
            return X, (target, self._masks(index, X.shape[-2:]))
        return X, target

    def _masks(self, index, size):
        lookup, stack = self.masks
        pos = torch.from_numpy(lookup[np.asarray(index, dtype=np.int64)])
        masks = torch.zeros((len(index), 1, *size))
        has = pos >= 0
        if bool(has.any()):
            masks[has] = stack[pos[has]]
        return masks


def collate_batch(batch):
    """Collate function for :class:`ImageBatchDataset`: batches come whole."""
    return batch


def iter_image_batches(data, image_size, batch_size, *, indices=None, device=None):
    """Yield ``(index, images)`` batches of an :class:`ImageInput`, in order.

    Parameters
    ----------
    data : ImageInput
    image_size : int or None
        Square side the images are resized to (see :meth:`ImageInput.load`).
    batch_size : int
        Images per batch.
    indices : array-like of int, default=None
        Which images, in that order; all of them when None.
    device : str or torch.device, default=None
        Where the batches go; they stay on the CPU when None.

    Yields
    ------
    index : ndarray of shape (b,), dtype int64
    images : Tensor of shape (b, 3, S, S)
        Float32 in [0, 1], channels-last.
    """
    indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
    for start in range(0, len(indices), batch_size):
        index = indices[start:start + batch_size]
        x = data.load(index, image_size)
        yield index, (x if device is None else x.to(device))


def resize_images(images, size, batch=256):
    """Resize uint8 images ``(n, H, W)`` to ``(n, size, size)`` once, antialiased.

    For benchmarks and the demo, which resize a whole dataset up front so that
    every fit reads small images; the result equals what the detectors' own
    resizing gives to within uint8 rounding.

    Parameters
    ----------
    images : ndarray of shape (n, H, W), dtype uint8
    size : int
    batch : int, default=256
        Images resized at once.

    Returns
    -------
    ndarray of shape (n, size, size), dtype uint8
    """
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).float()[:, None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append(x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)
