import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from skad.preprocessing import ContaminationInjector


class RecordingDetector(OutlierMixin, BaseEstimator):
    """Dummy outlier detector that keeps a copy of what each method received."""

    def fit(self, X, y=None):
        self.fit_X_ = np.array(X, copy=True)
        self.fit_y_ = None if y is None else np.array(y, copy=True)
        return self

    def score_samples(self, X):
        self.score_X_ = np.array(X, copy=True)
        return -np.asarray(X, dtype=float).reshape(len(X), -1).mean(axis=1)

    def predict(self, X):
        self.predict_X_ = np.array(X, copy=True)
        return np.ones(len(X), dtype=int)


def _data(n=20, n_labeled=4, shape=(3, 3)):
    X = np.zeros((n, *shape), dtype=np.uint8)
    X[:] = np.arange(n, dtype=np.uint8)[:, None, None]  # row i is filled with i
    y = np.ones(n, dtype=int)
    y[:n_labeled] = -1
    anomalies = np.full((10, *shape), 200, dtype=np.uint8)
    anomalies += np.arange(10, dtype=np.uint8)[:, None, None]  # anomaly j is 200 + j
    return X, y, anomalies


def test_fit_transform_replaces_a_fraction_of_unlabelled_rows():
    X, y, anomalies = _data()
    X_copy, y_copy = X.copy(), y.copy()
    injector = ContaminationInjector(anomalies, contamination=0.25, random_state=0)
    Xt = injector.fit_transform(X, y)

    assert injector.n_injected_ == 4  # round(0.25 * 16 unlabelled rows)
    np.testing.assert_array_equal(X, X_copy)  # X not mutated
    np.testing.assert_array_equal(y, y_copy)
    assert Xt is not X and Xt.shape == X.shape and Xt.dtype == X.dtype
    replaced = np.flatnonzero((Xt != X).any(axis=(1, 2)))
    np.testing.assert_array_equal(replaced, injector.injected_indices_)
    assert (y[replaced] == 1).all()  # labelled rows are never replaced
    np.testing.assert_array_equal(Xt[replaced], anomalies[injector.anomaly_indices_])
    assert len(set(injector.anomaly_indices_)) == 4  # without replacement
    # share of anomalies among the +1 rows equals contamination
    assert injector.n_injected_ / (y == 1).sum() == 0.25


@pytest.mark.parametrize("contamination, expected", [(0.0, 0), (0.1, 2), (0.03, 0), (1.0, 16)])
def test_number_of_injected_rows(contamination, expected):
    X, y, anomalies = _data()
    injector = ContaminationInjector(anomalies, contamination=contamination, random_state=0)
    with warnings.catch_warnings():
        # 16 rows from a pool of 10 warns (test_pool_exhausted_then_with_replacement)
        warnings.simplefilter("error" if expected <= len(anomalies) else "ignore")
        Xt = injector.fit_transform(X, y)
    assert injector.n_injected_ == expected == len(injector.injected_indices_)
    assert ((Xt != X).any(axis=(1, 2))).sum() == expected


def test_pool_exhausted_then_with_replacement():
    X, y, anomalies = _data(n=40, n_labeled=0)
    injector = ContaminationInjector(anomalies[:3], contamination=0.2, random_state=0)
    with pytest.warns(UserWarning, match=r"replaces 8 rows.*holds 3 images: 5 of them are "
                                         r"injected again.*contamination <= 0.075"):
        injector.fit_transform(X, y)
    assert injector.n_injected_ == 8
    sources = injector.anomaly_indices_
    assert sorted(sources[:3]) == [0, 1, 2]  # the whole pool is used once first
    assert set(sources) == {0, 1, 2}


def test_transform_and_fit_are_pass_through():
    X, y, anomalies = _data()
    injector = ContaminationInjector(anomalies, random_state=0)
    with pytest.raises(NotFittedError):
        injector.transform(X)
    assert injector.fit(X, y) is injector
    assert injector.transform(X) is X
    # fit and fit_transform draw the same rows for the same random_state
    rows = injector.injected_indices_.copy()
    injector.fit_transform(X, y)
    np.testing.assert_array_equal(rows, injector.injected_indices_)


def test_pipeline_fits_on_contaminated_and_predicts_on_clean_data():
    X, y, anomalies = _data()
    pipe = make_pipeline(
        ContaminationInjector(anomalies, contamination=0.5, random_state=0), RecordingDetector()
    )
    pipe.fit(X, y)
    injector, detector = pipe[0], pipe[-1]
    assert injector.n_injected_ == 8
    seen = detector.fit_X_
    assert (seen[injector.injected_indices_] >= 200).all()
    assert ((seen >= 200).any(axis=(1, 2))).sum() == 8
    np.testing.assert_array_equal(detector.fit_y_, y)  # y reaches the detector unchanged

    X_new = X + 1
    pipe.predict(X_new)
    pipe.score_samples(X_new)
    np.testing.assert_array_equal(detector.predict_X_, X_new)
    np.testing.assert_array_equal(detector.score_X_, X_new)


def test_paths():
    X = [f"img_{i}.png" for i in range(10)]
    y = np.array([-1] + [1] * 9)
    anomalies = [f"anomaly_{j}.png" for j in range(5)]
    injector = ContaminationInjector(anomalies, contamination=1 / 3, random_state=0)
    Xt = injector.fit_transform(X, y)
    assert isinstance(Xt, list) and Xt is not X and X[0] == "img_0.png"
    assert injector.n_injected_ == 3
    assert [Xt[i] for i in injector.injected_indices_] == [
        anomalies[j] for j in injector.anomaly_indices_
    ]
    assert sum(x.startswith("anomaly") for x in Xt) == 3 and Xt[0] == "img_0.png"
    with pytest.raises(ValueError, match="noise_std > 0 needs image arrays"):
        ContaminationInjector(anomalies, noise_std=1.0).fit_transform(X, y)


def test_noise_and_dtypes():
    X, y, anomalies = _data(shape=(16, 16))
    Xt = ContaminationInjector(anomalies, contamination=0.5, noise_std=5.0, random_state=0)
    Xt = Xt.fit_transform(X, y)
    assert Xt.dtype == np.uint8
    replaced = Xt >= 150
    assert replaced.any() and 3 < Xt[replaced].astype(float).std() < 8

    X32 = X.astype(np.float32) / 255
    injector = ContaminationInjector(anomalies.astype(np.float64) / 255, random_state=0)
    Xt = injector.fit_transform(X32, y)
    assert Xt.dtype == np.float32


def test_deterministic():
    X, y, anomalies = _data()
    a = ContaminationInjector(anomalies, noise_std=3.0, random_state=4).fit_transform(X, y)
    b = ContaminationInjector(anomalies, noise_std=3.0, random_state=4).fit_transform(X, y)
    np.testing.assert_array_equal(a, b)


def test_errors():
    X, y, anomalies = _data()
    with pytest.raises(ValueError, match=r"shape \(3, 3\) but anomalies has \(4, 4\)"):
        ContaminationInjector(np.zeros((5, 4, 4), np.uint8)).fit(X, y)
    with pytest.raises(ValueError, match="dtype"):
        ContaminationInjector(anomalies / 255).fit(X, y)
    with pytest.raises(ValueError, match="both as arrays or both as lists"):
        ContaminationInjector(["a.png"]).fit(X, y)
    with pytest.raises(ValueError, match="needs y"):
        ContaminationInjector(anomalies).fit_transform(X)
    with pytest.raises(ValueError, match=r"only -1 .* and \+1"):
        ContaminationInjector(anomalies).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="one label per row"):
        ContaminationInjector(anomalies).fit(X, y[:-1])
    with pytest.raises(ValueError, match="'contamination' parameter of ContaminationInjector"):
        ContaminationInjector(anomalies, contamination=1.5).fit(X, y)
    with pytest.raises(ValueError, match="'noise_std' parameter"):
        ContaminationInjector(anomalies, noise_std=-1.0).fit(X, y)


def test_estimator_api():
    _, _, anomalies = _data()
    injector = ContaminationInjector(anomalies, contamination=0.2, random_state=1)
    params = clone(injector).get_params()
    assert params["contamination"] == 0.2 and params["random_state"] == 1
    tags = injector.__sklearn_tags__()
    assert tags.target_tags.required and tags.input_tags.three_d_array
    assert not hasattr(injector, "n_injected_")
