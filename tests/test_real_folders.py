"""Real inspection folders: gray and colour, 8 and 16 bits, PNG and float TIFF, side by side."""

import numpy as np
import pytest
import tifffile
from _helpers import make_tiny_images
from PIL import Image
from test_common import DETECTORS


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """16 normal images and 2 anomalies in six modes, plus 8-bit renderings of the 16-bit ones.

    Returns the folder's paths and ``{16-bit path: its 8-bit rendering's path}``.
    """
    root = tmp_path_factory.mktemp("mixed")
    renderings = tmp_path_factory.mktemp("renderings")
    X, _, _ = make_tiny_images(n_normal=16, n_anomalous=2, size=32, seed=5)
    rng = np.random.RandomState(5)
    pairs, modes = {}, ["gray", "rgb", "rgba", "palette", "gray16", "float"]
    for i, image in enumerate(X):
        mode = modes[i % len(modes)]
        path = root / f"{i:02d}_{mode}.{'tif' if mode == 'float' else 'png'}"
        gray = image[..., 0]
        if mode == "gray":
            Image.fromarray(gray).save(path)
        elif mode == "rgb":
            Image.fromarray(image).save(path)
        elif mode == "rgba":
            Image.fromarray(image).convert("RGBA").save(path)
        elif mode == "palette":
            Image.fromarray(image).quantize(256).save(path)
        elif mode == "gray16":
            # 16 bits of detail whose 8-bit rendering round(v / 257) is the 8-bit image
            sixteen = gray.astype(np.int32) * 257 + rng.randint(-128, 129, gray.shape)
            sixteen = np.clip(sixteen, 0, 65535).astype(np.uint16)
            Image.fromarray(sixteen).save(path)
            eight = renderings / f"{i:02d}_gray8.png"
            Image.fromarray(np.rint(sixteen / 257).astype(np.uint8)).save(eight)
            pairs[str(path)] = str(eight)
        else:
            tifffile.imwrite(path, (gray / 255).astype(np.float32))
    return sorted(str(p) for p in root.iterdir()), pairs


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_mixed_folder_fits_and_16_bit_images_score_as_their_8_bit_renderings(folder, name):
    paths, pairs = folder
    assert len(pairs) == 3
    y = np.where(np.arange(len(paths)) >= 16, -1, 1)
    det = DETECTORS[name](contamination=0.1).fit(paths, y)
    scores = -det.score_samples(paths)
    assert scores.shape == (18,) and np.isfinite(scores).all()
    spread = scores.max() - scores.min()
    sixteen = -det.score_samples(list(pairs))
    eight = -det.score_samples(list(pairs.values()))
    np.testing.assert_array_less(np.abs(sixteen - eight), 0.01 * spread)
    maps = det.localize(paths[:4])
    assert np.shape(maps) == (4, 32, 32)
