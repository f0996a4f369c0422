"""skad.pipeline: localize and evaluate through a Pipeline whose last step is a detector."""

import numpy as np
import pandas as pd
import pytest
from _helpers import make_tiny_images
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skad import ContaminationInjector, PatchCoreDetector
from skad.metrics import evaluate
from skad.pipeline import final_detector, localize, transform_to_detector

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, batch_size=8,
            coreset_ratio=0.5, device="cpu", random_state=0)


def _flip(X):
    return np.ascontiguousarray(np.asarray(X)[:, :, ::-1])


@pytest.fixture(scope="module")
def data():
    X, is_anomaly, masks = make_tiny_images(n_normal=20, n_anomalous=6, size=32, seed=0)
    return X, np.where(is_anomaly, -1, 1), masks


@pytest.fixture(scope="module")
def pipe(data):
    X, y, _ = data
    pool = X[y == -1][3:]
    return make_pipeline(ContaminationInjector(pool, contamination=0.1, random_state=0),
                         FunctionTransformer(_flip), PatchCoreDetector(**TINY)).fit(X, y)


def test_localize_applies_the_transformers_then_the_detector(pipe, data):
    X = data[0][:4]
    maps = localize(pipe, X)
    np.testing.assert_array_equal(maps, pipe[-1].localize(_flip(X)))
    assert maps.shape == (4, 32, 32) and maps.dtype == np.float32
    # a bare detector is its own pipeline
    np.testing.assert_array_equal(localize(pipe[-1], X), pipe[-1].localize(X))


def test_evaluate_through_a_pipeline_equals_the_detector_on_transformed_images(pipe, data):
    X, y, masks = data
    through = evaluate(pipe, X, y, masks=masks)
    direct = evaluate(pipe[-1], _flip(X), y, masks=_flip(masks))
    assert through.name == "PatchCoreDetector"
    assert list(through.index) == ["image_auroc", "image_auprc", "pixel_auroc", "aupro"]
    # the masks are not flipped by the pipeline: only the image-level metrics agree
    pd.testing.assert_series_equal(through[:2], direct[:2])
    assert np.isfinite(through).all()


def test_passthrough_steps_and_nested_pipelines():
    X = np.arange(12.0).reshape(6, 2)
    inner = make_pipeline(FunctionTransformer(lambda A: A + 1), IsolationForest(random_state=0))
    outer = Pipeline([("skip", "passthrough"), ("double", FunctionTransformer(lambda A: 2 * A)),
                      ("inner", inner)]).fit(X)
    detector, Xt = transform_to_detector(outer, X)
    assert detector is final_detector(outer) is inner[-1]
    np.testing.assert_array_equal(Xt, 2 * X + 1)


def test_a_final_step_without_localize_is_a_type_error():
    X = np.random.RandomState(0).normal(size=(20, 2))
    pipe = make_pipeline(FunctionTransformer(), IsolationForest(random_state=0)).fit(X)
    with pytest.raises(TypeError, match="IsolationForest has no localize.*last step"):
        localize(pipe, X)
    with pytest.raises(TypeError, match="IsolationForest has no localize"):
        evaluate(pipe, X, np.r_[np.ones(18), -np.ones(2)].astype(int),
                 masks=np.zeros((20, 1, 2)))


def test_a_saved_pipeline_localizes_after_loading(data, tmp_path):
    import warnings

    from skad.persistence import load, save

    X, y, _ = data
    pipe = make_pipeline(ContaminationInjector(X[y == -1][3:], contamination=0.1,
                                               random_state=0),
                         PatchCoreDetector(**TINY)).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every value has a typed form: loads untrusted
        save(pipe, tmp_path / "pipe.skad")
    loaded = load(tmp_path / "pipe.skad")
    np.testing.assert_array_equal(localize(loaded, X[:3]), localize(pipe, X[:3]))
