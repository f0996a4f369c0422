"""Tiny generated images for fast tests."""

import numpy as np


def make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0):
    """Striped normal images and anomalies with a bright square, uint8 (n, H, W, 3).

    Returns X, is_anomaly (bool) and masks (n, H, W).
    """
    rng = np.random.RandomState(seed)
    n = n_normal + n_anomalous
    yy, xx = np.mgrid[:size, :size]
    X = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.6)
        base = 110 + 40 * np.sin(freq * xx + phase) + rng.normal(0, 6, (size, size))
        img = np.repeat(base[..., None], 3, axis=2)
        if i >= n_normal:
            s = rng.randint(size // 5, size // 3)
            r, c = rng.randint(0, size - s, 2)
            img[r:r + s, c:c + s] = [250, 60, 40]
            masks[i, r:r + s, c:c + s] = True
        X[i] = np.clip(img, 0, 255).astype(np.uint8)
    return X, np.arange(n) >= n_normal, masks


def ignoring_y(cls):
    """A subclass of detector ``cls`` whose ``fit`` drops y.

    scikit-learn's checks fit with class labels such as {0, 1, 2}, which skad
    rejects by contract; this twin lets those checks test everything else. It
    is registered in this module so that it pickles.
    """
    name = f"{cls.__name__}IgnoringY"
    if name not in globals():

        def fit(self, X, y=None):
            return cls.fit(self, X)

        globals()[name] = type(name, (cls,), {"fit": fit, "__module__": __name__})
    return globals()[name]
