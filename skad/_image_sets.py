"""Checks and row operations on image sets: arrays of images or lists of image paths.

Shared by :mod:`skad.preprocessing` and :mod:`skad.model_selection`, which
both take normal and anomalous images in either form.
"""

import os

import numpy as np

from ._images import is_path_sequence

__all__ = ["add_gaussian_noise", "check_image_set", "check_same_layout", "take"]


def check_image_set(X, name):
    """Return ``("paths", list_of_str)`` or ``("array", ndarray)``; never copies an array.

    Arrays must be numeric (bool, int or float) with at least 2 dimensions, the first
    one indexing samples.
    """
    if is_path_sequence(X):
        return "paths", [os.fspath(x) for x in X]
    if isinstance(X, list | tuple) and len(X) == 0:
        raise ValueError(f"{name} is empty; pass at least one image.")
    array = np.asarray(X)
    if array.dtype.kind not in "biuf" or array.ndim < 2:
        raise ValueError(
            f"{name} must be a numeric array of images, shape (n, H, W), (n, H, W, C) or "
            f"(n, C, H, W), or a sequence of image file paths; got an array of dtype "
            f"{array.dtype} and shape {array.shape}."
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass at least one image.")
    return "array", array


def check_same_layout(kind_a, a, name_a, kind_b, b, name_b):
    """Check two collections are both path lists or both arrays of the same image shape."""
    if kind_a != kind_b:
        raise ValueError(
            f"{name_a} is {'a list of paths' if kind_a == 'paths' else 'an array'} but {name_b} "
            f"is {'a list of paths' if kind_b == 'paths' else 'an array'}; pass both as arrays "
            "or both as lists of file paths."
        )
    if kind_a == "array":
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"{name_a} has images of shape {a.shape[1:]} but {name_b} has {b.shape[1:]}; "
                "resize them to one size and layout beforehand (no silent resizing)."
            )
        if (a.dtype == np.uint8) != (b.dtype == np.uint8) or (
            a.dtype.kind in "biu" and b.dtype.kind in "biu" and a.dtype != b.dtype
        ):
            raise ValueError(
                f"{name_a} has dtype {a.dtype} but {name_b} has {b.dtype}; convert both to "
                "uint8 (0-255) or both to float (0-1)."
            )


def take(kind, X, indices):
    """Rows ``indices`` of an array (a new array) or of a list of paths (a new list)."""
    indices = np.asarray(indices, dtype=np.intp)
    if kind == "paths":
        return [X[i] for i in indices]
    return X[indices]


def add_gaussian_noise(images, noise_std, rng):
    """Return a noisy copy of ``images``; ``noise_std`` is in 0-255 units.

    uint8 images get noise of std ``noise_std``, rounded and clipped to 0..255;
    float images (assumed in [0, 1]) get std ``noise_std / 255``, clipped to [0, 1].
    The dtype is kept.
    """
    if noise_std == 0 or images.shape[0] == 0:
        return images.copy()
    if images.dtype == np.uint8:
        noisy = images + rng.normal(0.0, noise_std, size=images.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if images.dtype.kind == "f":
        noise = rng.normal(0.0, noise_std / 255.0, size=images.shape)
        return np.clip(images + noise, 0.0, 1.0).astype(images.dtype)
    raise ValueError(
        f"noise_std > 0 needs uint8 (0-255) or float (0-1) images; got dtype {images.dtype}. "
        "Convert the images or set noise_std=0."
    )
