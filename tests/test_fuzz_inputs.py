"""Fuzzing the input validation of every detector: a clean error naming the argument, or a fit.

Inputs are drawn over dtypes (byte orders, widths, complex, strings, dates,
objects), ranks, channel counts, value ranges (NaN, out of range), ragged
and nested lists, and lists of image files of every mode (broken, missing,
a folder). Each must either be refused with a ``ValueError`` or
``TypeError`` whose message names ``X`` or ``y``, or be accepted and then
load, fit and score without any other exception. Most examples stop after
validation and loading a batch (``test_validation_fuzz``); a smaller share is
fitted with each registered detector (``test_fit_fuzz``).
"""

import re

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_common import DETECTORS

from skad._images import check_labels

DTYPES = ["uint8", "int8", "int16", "int64", "uint16", "uint64", "bool", "float16", "float32",
          "float64", "longdouble", ">f4", ">f8", ">i2", ">u2", "complex64", "complex128",
          "<U3", "S3", "datetime64[s]", "timedelta64[s]", "object", "V4"]
VALUES = ["unit", "zeros", "out_of_range", "nan", "negative"]
NAMES = re.compile(r"\b(X|y)\b")

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Image files of many modes, and files and paths that are not images."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.RandomState(0)
    gray = rng.randint(0, 256, (9, 7)).astype(np.uint8)
    rgb = rng.randint(0, 256, (5, 11, 3)).astype(np.uint8)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(rgb).save(folder / "rgb.jpg")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(folder / "palette.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(rgb).save(folder / "anim.gif")
    tifffile.imwrite(folder / "float.tif", (gray / 255).astype(np.float32))
    tifffile.imwrite(folder / "hdr.tif", np.full((4, 4), 9.0, np.float32))
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "tiny.png")
    (folder / "text.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "sub").mkdir()
    good = ["gray.png", "rgb.jpg", "rgba.png", "palette.png", "gray16.png", "anim.gif",
            "float.tif", "tiny.png"]
    bad = ["hdr.tif", "text.png", "empty.png", "sub", "missing.png"]
    return {"good": [str(folder / n) for n in good], "bad": [str(folder / n) for n in bad]}


def _array(draw, rng):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rank = draw(st.integers(0, 5))
    shape = [draw(st.integers(0, 4))] + [draw(st.integers(0, 7)) for _ in range(rank - 1)]
    if rank == 4 and draw(st.booleans()):  # a channel axis, last or second
        shape[draw(st.sampled_from([1, 3]))] = draw(st.sampled_from([1, 2, 3, 4]))
    shape = tuple(shape[:rank])
    mode = draw(st.sampled_from(VALUES))
    base = rng.uniform(0, 1, shape)
    if mode == "zeros":
        base = np.zeros(shape)
    elif mode == "out_of_range":
        base = base * 400
    elif mode == "nan":
        base = np.where(base > 0.5, np.nan, base)
    elif mode == "negative":
        base = base - 0.5
    if dtype.kind in "iu":
        base = np.nan_to_num(base * (255 if mode == "unit" else 1), nan=0)
    if dtype.kind in "USOV" or dtype.kind in "mM":
        return np.zeros(shape, dtype=dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        return base.astype(dtype)


@st.composite
def inputs(draw, files):
    """``(X, y)`` of any kind."""
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["array", "array", "array", "ragged", "nested", "paths",
                                 "mixed", "odd"]))
    if kind == "array":
        X = _array(draw, rng)
    elif kind == "ragged":
        X = [np.zeros((draw(st.integers(1, 5)), draw(st.integers(1, 5))), np.uint8)
             for _ in range(draw(st.integers(2, 4)))]
    elif kind == "nested":
        X = rng.randint(-2, 300, (draw(st.integers(1, 3)), 4, 4)).tolist()
    elif kind == "paths":
        pool = files["good"] + (files["bad"] if draw(st.booleans()) else [])
        X = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6))
        if draw(st.booleans()):
            X = np.array(X)  # np.str_ items
    elif kind == "mixed":
        X = [files["good"][0], np.zeros((4, 4), np.uint8)]
    else:
        X = draw(st.sampled_from([None, 3, "gray.png", {"a": 1}, {1, 2}, [], [[]], b"x.png"]))
    n = _length(X)
    y_kind = draw(st.sampled_from(["none", "none", "valid", "wrong_length", "complex", "str",
                                   "ragged", "2d", "all_anomalies", "nan", "bool"]))
    y = {"none": None,
         "valid": np.where(rng.uniform(size=n) < 0.2, -1, 1),
         "wrong_length": np.ones(n + 1, int),
         "complex": np.ones(n, complex),
         "str": ["a"] * n,
         "ragged": [[1], [1, -1]] * max(n // 2, 1),
         "2d": np.ones((n, 2), int),
         "all_anomalies": -np.ones(n, int),
         "nan": np.full(n, np.nan),
         "bool": np.ones(n, bool)}[y_kind]
    return X, y


def _length(X):
    try:
        return len(X) if not isinstance(X, (str, bytes)) else 1
    except TypeError:
        return 1


def _clean(exc):
    return isinstance(exc, (ValueError, TypeError)) and NAMES.search(str(exc)) is not None


def _run(det, X, y, *, fit):
    """Validate (and fit and score); True if the input was accepted."""
    try:
        data = det._check_input(X, reset=True)
        check_labels(y, len(data))
        if not fit:
            if hasattr(data, "load"):
                data.load(np.arange(min(len(data), 3)), 16)
            return True
        det.fit(X, y)
    except Exception as exc:
        assert _clean(exc), f"{type(exc).__name__}: {exc}"
        return False
    scores = det.score_samples(X)
    assert scores.shape == (len(data),) and np.isfinite(scores).all()
    return True


@st.composite
def fit_inputs(draw, files):
    """Mostly valid ``(X, y)``: arrays of every accepted kind and layout, or image files,
    with one quirk (a bad file, NaN, out of range, a bad ``y``) in about a third of them."""
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    n = draw(st.integers(2, 6))
    if draw(st.booleans()):
        X = draw(st.lists(st.sampled_from(files["good"]), min_size=n, max_size=n))
    else:
        h, w, c = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.sampled_from([1, 3]))
        shape = draw(st.sampled_from([(n, h, w), (n, h, w, c), (n, c, h, w)]))
        dtype = np.dtype(draw(st.sampled_from(["uint8", "int64", "bool", "float16", "float32",
                                               "longdouble", ">f4", ">i2"])))
        values = rng.uniform(0, 1, shape)
        X = (values * 255).astype(dtype) if dtype.kind in "iu" else values.astype(dtype)
    y = np.where(np.arange(n) == 0, -1, 1) if draw(st.booleans()) else None
    quirk = draw(st.sampled_from([None, None, "file", "nan", "range", "y"]))
    if quirk == "file" and isinstance(X, list):
        X[0] = draw(st.sampled_from(files["bad"]))
    elif quirk in ("nan", "range") and not isinstance(X, list) and X.dtype.kind == "f":
        X = X.astype(np.float64)
        X.flat[0] = np.nan if quirk == "nan" else 2.0
    elif quirk == "y":
        y = np.r_[np.ones(n - 1), 0]
    return X, y


def test_validation_fuzz(files):
    outcomes = []

    @settings(max_examples=400, **SETTINGS)
    @given(data=st.data())
    def fuzz(data):
        name = data.draw(st.sampled_from(sorted(DETECTORS)))
        X, y = data.draw(inputs(files))
        outcomes.append(_run(DETECTORS[name](), X, y, fit=False))

    fuzz()
    assert sum(outcomes) >= 20 and len(outcomes) - sum(outcomes) >= 200  # both paths taken


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_fit_fuzz(files, name):
    outcomes = []

    @settings(max_examples=20, **SETTINGS)
    @given(data=st.data())
    def fuzz(data):
        X, y = data.draw(fit_inputs(files))
        det = DETECTORS[name](image_size=16, batch_size=4, contamination=0.2)
        if "steps_per_epoch" in det.get_params():
            det.set_params(steps_per_epoch=1)
        outcomes.append(_run(det, X, y, fit=True))

    fuzz()
    assert sum(outcomes) >= 4  # fitted and scored, not only refused
