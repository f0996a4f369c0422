"""Recorded outputs of every detector on a fixed tiny dataset (a regression guard).

``tests/data/snapshot.npz`` holds, for each detector of ``SNAPSHOT_DETECTORS``
fitted with ``random_state=0``: ``score_samples`` and ``localize`` of the
training images, and ``offset_`` with ``contamination="auto"`` and ``0.1``.
``tests/test_snapshot.py`` checks that today's code gives the same numbers;
a deliberate change of a method's numbers re-records the file with

    python tests/_snapshot.py --write

and says which detector changed and why in the commit message.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import make_tiny_images  # noqa: E402

PATH = Path(__file__).resolve().parent / "data" / "snapshot.npz"

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, batch_size=8,
            device="cpu", random_state=0)
TRAINED = dict(max_epochs=2)


def _detectors():
    from skad import (
        AdaptiveDeviationDetector,
        BoundaryGuidedDetector,
        DeviationNetworkDetector,
        DisentangledResidualDetector,
        MultiCueDetector,
        PaDiMDetector,
        PatchCoreDetector,
    )

    return {
        "DeviationNetworkDetector": lambda **kw: DeviationNetworkDetector(
            **TINY, **TRAINED, **kw),
        "AdaptiveDeviationDetector": lambda **kw: AdaptiveDeviationDetector(
            **TINY, **TRAINED, fuse_channels=8, n_reference=500, **kw),
        "AdaptiveDeviationDetector-saliency": lambda **kw: AdaptiveDeviationDetector(
            **TINY, **TRAINED, fuse_channels=8, n_reference=500, localization="saliency",
            **kw),
        "MultiCueDetector": lambda **kw: MultiCueDetector(
            **TINY, **TRAINED, fuse_channels=8, n_reference=500, **kw),
        "PatchCoreDetector": lambda **kw: PatchCoreDetector(**TINY, coreset_ratio=0.5, **kw),
        "PatchCoreDetector-reweighted": lambda **kw: PatchCoreDetector(
            **TINY, coreset_ratio=0.5, reweight_neighbors=3, **kw),
        "PaDiMDetector": lambda **kw: PaDiMDetector(**TINY, n_features=16, **kw),
        "BoundaryGuidedDetector": lambda **kw: BoundaryGuidedDetector(
            **TINY, **TRAINED, n_blocks=2, cond_dim=16, n_pseudo=8, steps_per_epoch=2, **kw),
        "DisentangledResidualDetector": lambda **kw: DisentangledResidualDetector(
            **TINY, **TRAINED, steps_per_epoch=3, n_reference=500, **kw),
    }


def dataset():
    """24 striped 32 px images, 4 with a bright square; two of those labelled."""
    X, is_anomaly, masks = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    y = np.ones(len(X), dtype=int)
    y[np.flatnonzero(is_anomaly)[:2]] = -1
    return X, y, masks


def tabular():
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (4, 3))]
    y = np.r_[np.ones(40), -np.ones(2), np.ones(2)].astype(int)
    return X, y


def record():
    """``{key: array}`` of today's outputs."""
    import torch

    torch.set_num_threads(2)
    X, y, masks = dataset()
    out = {}
    for name, make in _detectors().items():
        auto = make().fit(X, y)
        fixed = make(contamination=0.1).fit(X, y)
        out[f"{name}/score_samples"] = auto.score_samples(X)
        out[f"{name}/localize"] = auto.localize(X[:6])
        out[f"{name}/offset_auto"] = np.float64(auto.offset_)
        out[f"{name}/offset_0.1"] = np.float64(fixed.offset_)
    from skad import DeviationNetworkDetector

    Xt, yt = tabular()
    det = DeviationNetworkDetector(max_epochs=3, batch_size=8, device="cpu", random_state=0)
    det.fit(Xt, yt)
    out["DeviationNetworkDetector-tabular/score_samples"] = det.score_samples(Xt)
    # MultiCue with masks of its labelled anomalies
    from skad import MultiCueDetector

    det = MultiCueDetector(**TINY, **TRAINED, fuse_channels=8, n_reference=500)
    det.fit(X, y, masks=masks)
    out["MultiCueDetector-masks/score_samples"] = det.score_samples(X)
    return out


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/_snapshot.py --write [--add]   (re-records "
                 "tests/data/snapshot.npz; --add only adds the keys it does not hold yet)")
    PATH.parent.mkdir(exist_ok=True)
    outputs = record()
    if "--add" in sys.argv and PATH.exists():
        with np.load(PATH) as stored:
            outputs = {**outputs, **dict(stored)}  # keep every recorded number
    np.savez_compressed(PATH, **outputs)
    print(f"wrote {PATH}")
