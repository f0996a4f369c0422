"""skad.export.to_onnx: onnxruntime gives skad's scores and maps (the ``export`` extra)."""

import json
import sys

import numpy as np
import pytest
from _helpers import make_tiny_images
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skad._registry import DETECTORS, detector_class

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            steps_per_epoch=2, batch_size=8, device="cpu", random_state=0, n_reference=500,
            fuse_channels=8, coreset_ratio=0.5, n_features=16)

#: Registered detectors that have no ONNX graph, with the reason (documented in skad.export).
NOT_EXPORTED = {}

#: Detectors whose graph traces for one batch size only, with the reason (skad.export says so).
FIXED_BATCH = {
    "BoundaryGuidedDetector": "its flows score the positions in chunks, a loop whose length "
                              "depends on the batch",
}

#: Settings beyond the defaults whose exported graph differs.
VARIANTS = {
    "PatchCoreDetector-reweighted": ("PatchCoreDetector", {"reweight_neighbors": 3}),
    "AdaptiveDeviationDetector-saliency": ("AdaptiveDeviationDetector",
                                           {"localization": "saliency"}),
    "MultiCueDetector-segmentation": ("MultiCueDetector", {"localization": "segmentation"}),
}
CASES = {**{cls: (cls, {}) for _, cls in DETECTORS.values() if cls not in NOT_EXPORTED},
         **VARIANTS}
#: Which cases export a map: those whose maps are a forward pass.
WITH_MAP = {"PatchCoreDetector", "PatchCoreDetector-reweighted", "PaDiMDetector",
            "AdaptiveDeviationDetector", "MultiCueDetector-segmentation",
            "BoundaryGuidedDetector"}


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def data():
    X, is_anomaly, _ = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    return X, np.where(is_anomaly, -1, 1)


@pytest.fixture(scope="module")
def new_images():
    # images the detectors were not fitted on: a training patch is in PatchCore's bank, at a
    # distance that is float32 rounding noise in skad and onnxruntime alike
    return make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=5)[0]


def _fit(name, data):
    cls, extra = CASES[name]
    cls = detector_class(cls)
    params = cls().get_params()
    settings = {k: v for k, v in TINY.items() if k in params}
    return cls(**settings, **extra).fit(*data)


def _network_input(X):
    """What skad feeds its network for uint8 NHWC images at the network's size."""
    return np.ascontiguousarray(X.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def _relative(got, expected):
    return np.max(np.abs(got - expected)) / np.max(np.abs(expected))


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_gives_skads_scores_and_maps(name, data, new_images, ort, tmp_path):
    from skad.export import to_onnx

    det = _fit(name, data)
    batches = (slice(0, 1), slice(0, 7), slice(7, 24))  # batch sizes 1, 7 and 17
    if name in FIXED_BATCH:
        with pytest.raises(ValueError, match="does not trace for any batch size.*batch_size=1"):
            to_onnx(det, tmp_path / "model.onnx")
        assert not (tmp_path / "model.onnx").exists()
        path = to_onnx(det, tmp_path / "model.onnx", batch_size=1)
        batches = (slice(0, 1), slice(21, 22))  # a normal image and an anomaly
    else:
        path = to_onnx(det, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == (["anomaly_score", "anomaly_map"] if name in WITH_MAP
                       else ["anomaly_score"])
    X = new_images
    for rows in batches:
        x = _network_input(X[rows])
        got = dict(zip(outputs, session.run(None, {"images": x})))
        expected = -det.score_samples(X[rows])
        assert got["anomaly_score"].shape == expected.shape
        assert _relative(got["anomaly_score"], expected) < 1e-4
        if "anomaly_map" in got:
            maps = det.localize(X[rows])
            assert got["anomaly_map"].shape == maps.shape
            assert _relative(got["anomaly_map"], maps) < 1e-4
    props = {p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}
    assert props["skad.detector"] == type(det).__name__
    assert float(props["skad.threshold"]) == -det.offset_
    assert set(json.loads(props["skad.outputs"])) == set(outputs)


def test_every_registered_detector_is_exported_or_says_why():
    for _, cls in DETECTORS.values():
        assert cls in CASES or cls in NOT_EXPORTED, cls
        if cls in NOT_EXPORTED:
            assert NOT_EXPORTED[cls], f"{cls}: say why it is not exported"


def test_tabular_devnet_exports_rows(ort, tmp_path):
    from skad import DeviationNetworkDetector
    from skad.export import to_onnx

    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (4, 3))]
    y = np.r_[np.ones(40), -np.ones(2), np.ones(2)].astype(int)
    det = DeviationNetworkDetector(max_epochs=2, batch_size=8, device="cpu",
                                   random_state=0).fit(X, y)
    session = ort.InferenceSession(str(to_onnx(det, tmp_path / "rows.onnx")))
    (score,) = session.run(None, {"rows": X.astype(np.float32)})
    np.testing.assert_allclose(score, -det.score_samples(X), rtol=1e-4, atol=1e-6)


def test_calibrated_threshold_and_normalisation_travel_in_the_metadata(data, ort, tmp_path):
    import onnx

    from skad.export import to_onnx
    from skad.thresholds import calibrate, score_normalized

    det = _fit("PaDiMDetector", data)
    X = data[0]
    calibrate(det, X[:20], max_fpr=0.1)
    props = {p.key: p.value for p in onnx.load(str(to_onnx(det, tmp_path / "m.onnx")))
             .metadata_props}
    norm = json.loads(props["skad.normalization"])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    score = session.run(None, {"images": _network_input(X)})[0]
    z = (score - norm["threshold"]) / norm["scale"]
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), score_normalized(det, X), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_array_equal(score > float(props["skad.threshold"]),
                                  det.predict(X) == -1)


def test_a_graph_that_does_not_match_the_detector_is_refused(data, ort, tmp_path,
                                                             monkeypatch):
    from skad.export import to_onnx
    from skad.nn.export import ScoreGraph

    det = _fit("AdaptiveDeviationDetector-saliency", data)

    class Doubled(ScoreGraph):
        def forward(self, x):
            return (2 * self.module(x).score,)

    monkeypatch.setattr(det, "_export_graph", lambda: Doubled(det.net_.module_))
    with pytest.raises(RuntimeError, match="anomaly_score .* away from skad's.*removed"):
        to_onnx(det, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()


def test_a_fixed_batch_size(data, new_images, ort, tmp_path):
    from skad.export import to_onnx

    det = _fit("PatchCoreDetector", data)
    session = ort.InferenceSession(str(to_onnx(det, tmp_path / "one.onnx", batch_size=1)))
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    score, _ = session.run(None, {"images": _network_input(new_images[:1])})
    assert _relative(score, -det.score_samples(new_images[:1])) < 1e-4
    with pytest.raises(ValueError, match="X_check has 3 rows but .* batch_size=1"):
        to_onnx(det, tmp_path / "x.onnx", batch_size=1, X_check=np.zeros((3, 3, 32, 32)))
    with pytest.raises(ValueError, match="batch_size must be None or a positive int"):
        to_onnx(det, tmp_path / "x.onnx", batch_size=0)


def test_pipelines_and_foreign_estimators_are_type_errors(data, ort, tmp_path):
    from skad.export import to_onnx

    X = np.random.RandomState(0).normal(size=(20, 2))
    forest = IsolationForest(random_state=0).fit(X)
    with pytest.raises(TypeError, match="IsolationForest has no ONNX export graph"):
        to_onnx(forest, tmp_path / "f.onnx")
    pipe = make_pipeline(FunctionTransformer(), IsolationForest(random_state=0)).fit(X)
    with pytest.raises(TypeError, match=r"not a Pipeline.*pipe\[-1\]"):
        to_onnx(pipe, tmp_path / "p.onnx")


def test_without_the_extra_the_error_names_it(data, monkeypatch, tmp_path):
    from skad.export import to_onnx

    det = _fit("PaDiMDetector", data)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "skad\[export\]"'):
        to_onnx(det, tmp_path / "m.onnx")
