import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from skad.datasets import load_elpv
from skad.model_selection import contaminated_split, n_contaminants


def _ids(n, start=0):
    """Images whose every pixel is their id, so each row can be traced back."""
    return np.broadcast_to(np.arange(start, start + n)[:, None, None], (n, 2, 3)).astype(np.int64)


def _row_ids(X):
    return X[:, 0, 0].tolist()


@pytest.mark.parametrize(
    "r, n, expected",
    [(0.0, 1131, 0), (0.1, 1131, 125), (0.2, 1131, 282), (0.1, 9, 1), (0.2, 4, 1), (0.5, 7, 7)],
)
def test_n_contaminants(r, n, expected):
    assert n_contaminants(r, n) == expected


@pytest.mark.parametrize("contamination", [0.0, 0.05, 0.1, 0.2])
def test_counts_follow_the_formula(contamination):
    X_normal, X_anomalous = _ids(100), _ids(60, start=1000)
    X_train, y_train, X_test, y_test = contaminated_split(
        X_normal, X_anomalous, n_labeled=5, contamination=contamination, random_state=0
    )
    n_c = int(np.floor(contamination / (1 - contamination) * 75 + 1e-9))
    assert len(X_train) == len(y_train) == 75 + 5 + n_c
    assert (y_train == -1).sum() == 5
    assert len(X_test) == len(y_test) == 25 + 60 - 5 - n_c
    assert (y_test == 1).sum() == 25
    ids_train = np.array(_row_ids(X_train))
    # the +1 training rows that are anomalies are exactly the n_c contaminants
    assert ((ids_train >= 1000) & (y_train == 1)).sum() == n_c
    assert ((ids_train >= 1000) == ((y_train == -1) | (ids_train >= 1000))).all()


def test_disjoint_and_removed_from_test():
    X_normal, X_anomalous = _ids(80), _ids(50, start=1000)
    X_train, y_train, X_test, y_test, idx = contaminated_split(
        X_normal,
        X_anomalous,
        n_labeled=4,
        contamination=0.2,
        random_state=3,
        return_indices=True,
    )
    labeled, contaminant, test_anom = map(set, (idx.labeled, idx.contaminant, idx.anomalous_test))
    assert len(labeled) == 4 and len(contaminant) == n_contaminants(0.2, 60) == 15
    assert not labeled & contaminant and not (labeled | contaminant) & test_anom
    assert labeled | contaminant | test_anom == set(range(50))
    assert set(idx.normal_train) | set(idx.normal_test) == set(range(80))
    assert not set(idx.normal_train) & set(idx.normal_test)

    train_ids, test_ids = set(_row_ids(X_train)), set(_row_ids(X_test))
    assert not train_ids & test_ids
    assert set(_row_ids(X_test)) == set(idx.normal_test) | {1000 + i for i in test_anom}

    # indices describe the returned rows
    def to_ids(rows):  # rows of [X_normal; X_anomalous] -> image ids
        return np.where(rows < 80, rows, rows - 80 + 1000)

    np.testing.assert_array_equal(X_train[:, 0, 0], to_ids(idx.train))
    np.testing.assert_array_equal(X_test[:, 0, 0], to_ids(idx.test))
    contaminant_rows = X_train[idx.train_contaminant, 0, 0] - 1000
    assert set(contaminant_rows) == contaminant
    assert (y_train[idx.train_contaminant] == 1).all()
    assert (y_test == np.where(np.array(_row_ids(X_test)) >= 1000, -1, 1)).all()


def test_normal_split_is_train_test_split():
    X_normal, X_anomalous = _ids(40), _ids(20, start=1000)
    *_, idx = contaminated_split(
        X_normal, X_anomalous, n_labeled=2, test_size=0.3, random_state=7, return_indices=True
    )
    expected_train, expected_test = train_test_split(np.arange(40), test_size=0.3, random_state=7)
    np.testing.assert_array_equal(idx.normal_train, expected_train)
    np.testing.assert_array_equal(idx.normal_test, expected_test)


def test_deterministic_and_shuffled():
    X_normal, X_anomalous = _ids(60), _ids(30, start=1000)
    kwargs = dict(n_labeled=5, contamination=0.1, random_state=11)
    first = contaminated_split(X_normal, X_anomalous, **kwargs)
    second = contaminated_split(X_normal, X_anomalous, **kwargs)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = contaminated_split(
        X_normal, X_anomalous, n_labeled=5, contamination=0.1, random_state=12
    )
    assert not np.array_equal(first[0], other[0])
    y_train = first[1]
    # labelled anomalies are not bunched at the end of the training set
    assert not (y_train[-5:] == -1).all()
    np.testing.assert_array_equal(X_normal, _ids(60))


def test_hard_setting_groups():
    X_normal, X_anomalous = _ids(60), _ids(40, start=1000)
    groups = np.array(["mono"] * 25 + ["poly"] * 15)
    X_train, y_train, X_test, y_test, idx = contaminated_split(
        X_normal,
        X_anomalous,
        n_labeled=10,
        contamination=0.1,
        groups=groups,
        seen_groups="mono",
        random_state=0,
        return_indices=True,
    )
    assert (groups[idx.labeled] == "mono").all() and len(idx.labeled) == 10
    assert (groups[idx.anomalous_test] == "poly").all()
    assert len(idx.contaminant) == n_contaminants(0.1, 45) == 5
    assert not set(idx.contaminant) & set(idx.anomalous_test)
    assert set(idx.anomalous_test) == set(range(25, 40)) - set(idx.contaminant)
    assert (y_test == -1).sum() == len(idx.anomalous_test)
    # a list of seen groups works too
    *_, idx2 = contaminated_split(
        X_normal, X_anomalous, n_labeled=3, groups=groups, seen_groups=["poly"],
        random_state=0, return_indices=True,
    )  # fmt: skip
    assert (groups[idx2.labeled] == "poly").all() and len(idx2.anomalous_test) == 25


def test_paths():
    X_normal = [f"normal_{i}.png" for i in range(20)]
    X_anomalous = [f"anomaly_{i}.png" for i in range(10)]
    X_train, y_train, X_test, y_test = contaminated_split(
        X_normal, X_anomalous, n_labeled=2, contamination=0.1, random_state=0
    )
    assert isinstance(X_train, list) and isinstance(X_test, list)
    assert len(X_train) == 15 + 2 + 1 and len(X_test) == 5 + 7
    assert not set(X_train) & set(X_test)
    labeled = [x for x, y in zip(X_train, y_train) if y == -1]
    assert all(x.startswith("anomaly") for x in labeled)
    # a pandas Series of paths (e.g. a DataFrame column) works the same
    from_series = contaminated_split(
        pd.Series(X_normal), np.array(X_anomalous), n_labeled=2, contamination=0.1, random_state=0
    )
    assert from_series[0] == X_train and from_series[2] == X_test
    with pytest.raises(ValueError, match="noise_std > 0 needs image arrays"):
        contaminated_split(X_normal, X_anomalous, n_labeled=2, noise_std=2.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_noise_on_contaminants_only(dtype):
    scale = 255 if dtype == np.uint8 else 1.0
    rng = np.random.RandomState(0)
    X_normal = (rng.uniform(0.2, 0.8, size=(40, 16, 16)) * scale).astype(dtype)
    # half black anomalies (noise clipped at 0), half mid-gray ones (noise unclipped)
    X_anomalous = np.repeat([0.0, 0.5], 15)[:, None, None] * np.ones((30, 16, 16)) * scale
    X_anomalous = X_anomalous.astype(dtype)
    X_anomalous_copy = X_anomalous.copy()
    X_train, y_train, X_test, y_test, idx = contaminated_split(
        X_normal, X_anomalous, n_labeled=2, contamination=0.2, noise_std=10.0,
        random_state=0, return_indices=True,
    )  # fmt: skip
    np.testing.assert_array_equal(X_anomalous, X_anomalous_copy)
    assert X_train.dtype == dtype and X_test.dtype == dtype
    noisy = X_train[idx.train_contaminant].astype(float)
    clean = X_anomalous[idx.train[idx.train_contaminant] - 40].astype(float)
    assert noisy.min() >= 0 and noisy.max() <= scale
    # the noise std is noise_std in 0-255 units (measured away from the clipping bound)
    residual = (noisy - clean)[clean > 0] * (255 / scale)
    assert residual.size > 0 and 8 < residual.std() < 12
    # every other training row and the whole test set are untouched
    others = ~idx.train_contaminant
    X_all = np.concatenate([X_normal, X_anomalous])
    np.testing.assert_array_equal(X_train[others], X_all[idx.train[others]])
    np.testing.assert_array_equal(X_test, X_all[idx.test])


def test_masks_test():
    X_normal, X_anomalous = _ids(20), _ids(10, start=1000)
    masks = np.zeros((10, 2, 3), dtype=bool)
    masks[:, 0, 0] = True
    masks[np.arange(10), 1, np.arange(10) % 3] = True
    X_train, y_train, X_test, y_test, masks_test, idx = contaminated_split(
        X_normal, X_anomalous, n_labeled=2, masks_anomalous=masks, random_state=0,
        return_indices=True,
    )  # fmt: skip
    assert masks_test.shape == (len(X_test), 2, 3) and masks_test.dtype == bool
    assert not masks_test[y_test == 1].any()
    np.testing.assert_array_equal(masks_test[y_test == -1], masks[idx.anomalous_test])

    mask_paths = [f"m{i}.png" if i % 2 else None for i in range(10)]
    *_, masks_test, idx = contaminated_split(
        X_normal, X_anomalous, n_labeled=2, masks_anomalous=mask_paths, random_state=0,
        return_indices=True,
    )  # fmt: skip
    assert masks_test[:5] == [None] * 5
    assert masks_test[5:] == [mask_paths[i] for i in idx.anomalous_test]


def test_errors():
    X_normal, X_anomalous = _ids(40), _ids(10, start=1000)
    with pytest.raises(ValueError, match=r"Not enough anomalies.*= 12 needed.*has 10"):
        contaminated_split(X_normal, X_anomalous, n_labeled=8, contamination=0.1)
    with pytest.raises(ValueError, match=r"contamination must be a float in \[0, 0.5\]"):
        contaminated_split(X_normal, X_anomalous, contamination=0.6)
    with pytest.raises(ValueError, match="contamination"):
        contaminated_split(X_normal, X_anomalous, contamination=-0.1)
    with pytest.raises(ValueError, match="n_labeled must be a non-negative int"):
        contaminated_split(X_normal, X_anomalous, n_labeled=-1)
    with pytest.raises(ValueError, match="noise_std"):
        contaminated_split(X_normal, X_anomalous, n_labeled=1, noise_std=-1)
    with pytest.raises(ValueError, match="shape"):
        contaminated_split(X_normal, np.zeros((10, 3, 3), np.int64), n_labeled=1)
    with pytest.raises(ValueError, match="dtype"):
        contaminated_split(X_normal.astype(np.uint8), X_anomalous.astype(float), n_labeled=1)
    with pytest.raises(ValueError, match="both as arrays or both as lists"):
        contaminated_split(["a.png"] * 4, X_anomalous, n_labeled=1)
    with pytest.raises(ValueError, match="one mask per anomalous image"):
        contaminated_split(X_normal, X_anomalous, n_labeled=1, masks_anomalous=np.zeros((3, 2, 3)))
    groups = ["a"] * 5 + ["b"] * 5
    with pytest.raises(ValueError, match="groups needs seen_groups"):
        contaminated_split(X_normal, X_anomalous, n_labeled=1, groups=groups)
    with pytest.raises(ValueError, match="seen_groups needs groups"):
        contaminated_split(X_normal, X_anomalous, n_labeled=1, seen_groups="a")
    with pytest.raises(ValueError, match=r"\['c'\] not found in groups.*\['a', 'b'\]"):
        contaminated_split(X_normal, X_anomalous, n_labeled=1, groups=groups, seen_groups="c")
    with pytest.raises(ValueError, match="covers every group"):
        contaminated_split(
            X_normal, X_anomalous, n_labeled=1, groups=groups, seen_groups=["a", "b"]
        )
    with pytest.raises(ValueError, match="seen groups hold 5"):
        contaminated_split(X_normal, X_anomalous, n_labeled=6, groups=groups, seen_groups="a")
    with pytest.raises(ValueError, match="X_normal must be a numeric array"):
        contaminated_split(np.zeros(5), X_anomalous)


def test_elpv_dra_split():
    elpv = load_elpv(return_arrays=False)
    p, paths = elpv.probability, elpv.filenames
    X_normal, X_anomalous = paths[p == 0], paths[p == 1]
    cell_type = elpv.cell_type[p == 1]
    assert len(X_normal) == 1508 and len(X_anomalous) == 715

    X_train, y_train, X_test, y_test, idx = contaminated_split(
        X_normal, X_anomalous, n_labeled=10, random_state=42, return_indices=True
    )
    expected_train, expected_test = train_test_split(
        np.arange(1508), test_size=0.25, random_state=42
    )
    np.testing.assert_array_equal(idx.normal_train, expected_train)
    assert len(idx.normal_train) == 1131 and len(idx.normal_test) == 377
    assert (y_train == 1).sum() == 1131 and (y_train == -1).sum() == 10
    assert (y_test == 1).sum() == 377 and (y_test == -1).sum() == 705
    train_normals = {x for x, y in zip(X_train, y_train) if y == 1}
    assert train_normals == set(X_normal[expected_train])
    assert X_test[:377] == X_normal[expected_test].tolist()

    # 10% contamination: floor(0.1 / 0.9 * 1131) = 125 contaminants
    _, y_train, _, y_test = contaminated_split(
        X_normal, X_anomalous, n_labeled=10, contamination=0.1, random_state=42
    )
    assert len(y_train) == 1131 + 10 + 125 and (y_test == -1).sum() == 715 - 10 - 125

    # hard setting: labelled mono anomalies, tested on poly ones
    *_, y_test, idx = contaminated_split(
        X_normal, X_anomalous, n_labeled=10, groups=cell_type, seen_groups="mono",
        random_state=42, return_indices=True,
    )  # fmt: skip
    assert (cell_type[idx.labeled] == "mono").all()
    assert (y_test == -1).sum() == 402 and (cell_type[idx.anomalous_test] == "poly").all()


# ------------------------------------------------------------ LabelledAnomalyKFold
def test_labelled_anomaly_kfold_is_stratified_kfold_on_the_anomaly_flag():
    from sklearn.model_selection import StratifiedKFold

    from skad.model_selection import LabelledAnomalyKFold

    y = np.ones(40, dtype=int)
    y[[3, 9, 17, 22, 31, 38]] = -1
    cv = LabelledAnomalyKFold(n_splits=3, shuffle=True, random_state=0)
    folds = list(cv.split(np.zeros((40, 4, 4)), y))
    reference = StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(40), y == -1)
    for (train, test), (ref_train, ref_test) in zip(folds, reference):
        np.testing.assert_array_equal(test, ref_test)
        np.testing.assert_array_equal(train, ref_train)
        assert (y[test] == -1).sum() == 2 and (y[train] == -1).sum() == 4
    assert cv.get_n_splits() == 3


@settings(max_examples=40, deadline=None)
@given(n_splits=st.integers(2, 6), n_anomalous=st.integers(0, 12), n_other=st.integers(1, 40),
       seed=st.integers(0, 1000))
def test_labelled_anomaly_kfold_keeps_anomalies_in_every_fold_or_says_why(
        n_splits, n_anomalous, n_other, seed):
    from skad.model_selection import LabelledAnomalyKFold

    y = np.random.RandomState(seed).permutation(np.r_[-np.ones(n_anomalous),
                                                      np.ones(n_other)].astype(int))
    cv = LabelledAnomalyKFold(n_splits, shuffle=True, random_state=seed)
    if n_anomalous < n_splits or n_other < n_splits:
        with pytest.raises(ValueError, match=r"LabelledAnomalyKFold\(n_splits=|no labelled"):
            list(cv.split(y, y))
        return
    for train, test in cv.split(y, y):
        assert (y[test] == -1).any() and (y[test] == 1).any() and (y[train] == -1).any()


def test_labelled_anomaly_kfold_errors_name_the_fix():
    from skad.model_selection import LabelledAnomalyKFold

    y = np.r_[np.ones(10), -np.ones(2)].astype(int)
    with pytest.raises(ValueError, match=r"2 labelled anomalies \(-1\) but n_splits=3.*"
                                         r"LabelledAnomalyKFold\(n_splits=2\)"):
        list(LabelledAnomalyKFold(3).split(y, y))
    with pytest.raises(ValueError, match="no labelled anomaly"):
        list(LabelledAnomalyKFold(3).split(y, np.ones(12)))
    with pytest.raises(ValueError, match="needs y"):
        list(LabelledAnomalyKFold(3).split(y, None))
    with pytest.raises(ValueError, match="predict's codes|-1 = anomaly"):
        list(LabelledAnomalyKFold(2).split(y, np.r_[np.zeros(10), np.ones(2)]))


def test_grid_search_with_a_fold_without_anomaly_warns_naming_the_splitter():
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.model_selection import GridSearchCV

    from skad import PaDiMDetector
    from skad.metrics import anomaly_auroc_scorer
    from skad.model_selection import LabelledAnomalyKFold

    rng = np.random.RandomState(0)
    X = rng.randint(90, 140, size=(24, 32, 32)).astype(np.uint8)
    X[-3:, 8:20, 8:20] = 255
    y = np.r_[np.ones(21), -np.ones(3)].astype(int)  # anomalies last: cv=3 folds 1, 2 have none
    det = PaDiMDetector(backbone="test_efficientnet", pretrained=False, image_size=32,
                        n_features=8, device="cpu", random_state=0)
    grid = {"reg_covar": [0.01]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = GridSearchCV(det, grid, scoring=anomaly_auroc_scorer, cv=3).fit(X, y)
    messages = [str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    assert any("has no anomaly (-1)" in m and "LabelledAnomalyKFold" in m for m in messages)
    assert np.isnan(search.cv_results_["split0_test_score"][0])
    # the splitter it names gives a finite score for every fold
    search = GridSearchCV(det, grid, scoring=anomaly_auroc_scorer,
                          cv=LabelledAnomalyKFold(3), error_score="raise").fit(X, y)
    assert all(np.isfinite(search.cv_results_[f"split{k}_test_score"][0]) for k in range(3))
