"""Toy generators of textured images with localised defects."""

from numbers import Integral, Real

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.utils import Bunch, check_random_state


def _normal_texture(rng, size, base_angle):
    """Smooth stripes plus low-frequency noise, with per-image brightness and contrast."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = base_angle + rng.normal(0.0, 0.15)
    frequency = rng.uniform(3.0, 6.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    noise = gaussian_filter(rng.normal(size=(size, size)), sigma=max(size / 16.0, 1.0))
    noise /= noise.std() + 1e-12
    fine = rng.normal(0.0, 0.02, size=(size, size))
    brightness = rng.uniform(0.35, 0.65)
    contrast = rng.uniform(0.08, 0.18)
    return brightness + contrast * stripes + 0.05 * noise + fine


def _defect_region(rng, size, defect_size):
    """Boolean mask of one blob (rotated ellipse) or scratch (thick segment)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    low, high = defect_size
    while True:
        if rng.uniform() < 0.5:
            # Blob: a rotated ellipse whose radii are fractions of the image side.
            cy, cx = rng.uniform(0.15 * size, 0.85 * size, size=2)
            ry, rx = rng.uniform(low, high, size=2) * size / 2
            theta = rng.uniform(0.0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            region = (u / max(rx, 1.0)) ** 2 + (v / max(ry, 1.0)) ** 2 <= 1.0
        else:
            # Scratch: a thick line segment whose length scales with defect_size.
            length = rng.uniform(2 * low, 2 * high + 0.1) * size
            theta = rng.uniform(0.0, np.pi)
            cy, cx = rng.uniform(0.2 * size, 0.8 * size, size=2)
            width = rng.uniform(0.6, max(1.0, size / 40.0))
            dy, dx = yy - cy, xx - cx
            along = dx * np.cos(theta) + dy * np.sin(theta)
            across = -dx * np.sin(theta) + dy * np.cos(theta)
            region = (np.abs(along) <= length / 2) & (np.abs(across) <= width)
        if region.sum() >= 4:
            return region


def make_defect_images(
    n_samples=100,
    *,
    image_size=64,
    anomaly_ratio=0.5,
    n_channels=3,
    defect_size=(0.08, 0.3),
    shuffle=True,
    random_state=None,
):
    """Generate textured images, some with localised defects.

    Normal images are smooth stripe textures whose orientation, frequency,
    phase, brightness, contrast, colour tint and low-frequency noise vary
    from image to image. Anomalous images are normal images with one or two
    defects, each a blob (rotated ellipse) or a scratch (thick segment) whose
    intensity is shifted (brighter or darker) and whose texture is replaced
    by fine-grained noise. Defects are visible, but the global brightness of
    normal images varies more than a defect changes the image mean, so no
    per-image intensity statistic separates the classes perfectly.

    Parameters
    ----------
    n_samples : int, default=100
        Number of images.

    image_size : int, default=64
        Height and width of the square images, at least 16.

    anomaly_ratio : float, default=0.5
        Fraction of anomalous images, in [0, 1]. The number of anomalous
        images is ``round(anomaly_ratio * n_samples)`` (half rounded up).

    n_channels : {1, 3}, default=3
        1 gives gray images of shape ``(n, H, W)``; 3 gives RGB images of
        shape ``(n, H, W, 3)``.

    defect_size : tuple of (float, float), default=(0.08, 0.3)
        Range of defect diameters (blobs) or half-lengths (scratches) as a
        fraction of ``image_size``, with ``0 < low <= high <= 1``.

    shuffle : bool, default=True
        Shuffle the images. If False, normal images come first.

    random_state : int, RandomState instance or None, default=None
        Determines the images. Pass an int for reproducible output.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        images : ndarray of shape (n_samples, H, W, 3) or (n_samples, H, W), dtype uint8
            The images.
        target : ndarray of shape (n_samples,)
            +1 for normal images, -1 for anomalous ones.
        masks : ndarray of shape (n_samples, H, W), dtype bool
            Defect pixels; all False for normal images.

    Examples
    --------
    >>> from skad.datasets import make_defect_images
    >>> data = make_defect_images(10, image_size=32, random_state=0)
    >>> data.images.shape, data.images.dtype.name
    ((10, 32, 32, 3), 'uint8')
    >>> int((data.target == -1).sum()), bool(data.masks[data.target == 1].any())
    (5, False)
    """
    if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int; got {n_samples!r}.")
    if not isinstance(image_size, Integral) or isinstance(image_size, bool) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16; got {image_size!r}.")
    if not isinstance(anomaly_ratio, Real) or not 0.0 <= anomaly_ratio <= 1.0:
        raise ValueError(f"anomaly_ratio must be a float in [0, 1]; got {anomaly_ratio!r}.")
    if n_channels not in (1, 3):
        raise ValueError(f"n_channels must be 1 or 3; got {n_channels!r}.")
    try:
        low, high = (float(v) for v in defect_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"defect_size must be a (low, high) pair of floats; got {defect_size!r}."
        ) from None
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"defect_size must satisfy 0 < low <= high <= 1; got {defect_size!r}.")

    rng = check_random_state(random_state)
    n_samples, size = int(n_samples), int(image_size)
    n_anomalous = int(np.floor(anomaly_ratio * n_samples + 0.5))
    target = np.ones(n_samples, dtype=int)
    target[n_samples - n_anomalous :] = -1
    if shuffle:
        target = target[rng.permutation(n_samples)]

    base_angle = rng.uniform(0.0, np.pi)
    images = np.empty((n_samples, size, size, n_channels), dtype=np.uint8)
    masks = np.zeros((n_samples, size, size), dtype=bool)
    for i in range(n_samples):
        image = _normal_texture(rng, size, base_angle)
        if target[i] == -1:
            for _ in range(rng.randint(1, 3)):
                region = _defect_region(rng, size, (low, high))
                shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3)
                grain = rng.normal(0.0, 0.07, size=(size, size))
                image = np.where(region, image + shift + grain, image)
                masks[i] |= region
        tint = rng.uniform(0.85, 1.0, size=n_channels) if n_channels == 3 else np.ones(1)
        pixels = np.clip(image[:, :, None] * tint, 0.0, 1.0)
        images[i] = np.rint(pixels * 255.0).astype(np.uint8)
    if n_channels == 1:
        images = images[..., 0]
    return Bunch(images=images, target=target, masks=masks)
