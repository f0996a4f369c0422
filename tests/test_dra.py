"""DisentangledResidualDetector: learning, the reference set, heads and ablations, batches."""

import numpy as np
import pytest
import torch
from _helpers import make_tiny_images
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from skorch.callbacks import Callback

from skad import DisentangledResidualDetector
from skad._images import ImageInput
from skad._net import PSEUDO
from skad.detectors._dra import ABLATIONS, HEADS, CutMixPseudoAnomalies

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            steps_per_epoch=3, batch_size=12, n_reference=500, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def data():
    X, is_anomaly, _ = make_tiny_images(n_normal=20, n_anomalous=4, size=32, seed=0)
    return X, np.where(is_anomaly, -1, 1)


@pytest.fixture(scope="module")
def fitted(data):
    return DisentangledResidualDetector(**TINY).fit(*data)


def test_learns_a_labelled_anomaly_type(global_random_seed):
    # digit 0 is normal; five labelled 7s; the test 7s must rank above the test 0s
    digits = load_digits()
    X, t = (digits.images / 16.0).astype(np.float32), digits.target
    rng = np.random.RandomState(global_random_seed)
    normal = rng.permutation(np.flatnonzero(t == 0))
    seen = rng.permutation(np.flatnonzero(t == 7))
    y = np.r_[np.ones(100), -np.ones(5)].astype(int)
    det = DisentangledResidualDetector(**{**TINY, "max_epochs": 6, "steps_per_epoch": 10,
                                          "random_state": global_random_seed})
    det.fit(X[np.r_[normal[:100], seen[:5]]], y)
    test = np.r_[normal[100:], seen[5:60]]
    assert roc_auc_score(t[test] == 7, -det.score_samples(X[test])) >= 0.9


# ------------------------------------------------------------------ reference set
def test_reference_set_is_drawn_once_from_the_unlabelled_images(fitted, data):
    X, y = data
    idx = fitted.reference_indices_
    assert len(idx) == 5 and np.all(np.diff(idx) > 0) and np.all(y[idx] == 1)
    stored = fitted.reference_images_
    assert stored.dtype == np.float32 and stored.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(stored, ImageInput(X).load(idx, 32).numpy())
    # the training steps left the references alone
    assert torch.equal(fitted.net_.module_.reference_images.cpu(), torch.from_numpy(stored))


def test_reference_set_follows_random_state(data):
    X, y = data
    params = {**TINY, "max_epochs": 1, "steps_per_epoch": 1}
    a = DisentangledResidualDetector(**{**params, "random_state": 5}).fit(X, y)
    b = DisentangledResidualDetector(**{**params, "random_state": 5}).fit(X, y)
    draws = {tuple(DisentangledResidualDetector(**{**params, "random_state": s}).fit(X, y)
                   .reference_indices_) for s in range(4)}
    np.testing.assert_array_equal(a.reference_indices_, b.reference_indices_)
    assert len(draws) > 1


def test_scores_are_deterministic_and_batch_independent(fitted, data):
    X = data[0]
    scores = fitted.score_samples(X)
    np.testing.assert_array_equal(fitted.score_samples(X), scores)
    alone = np.array([fitted.score_samples(X[i:i + 1])[0] for i in range(len(X))])
    np.testing.assert_allclose(alone, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fitted.score_samples(X[::-1])[::-1], scores, rtol=1e-5,
                               atol=1e-6)


def test_localize_is_batch_independent_and_releases_the_fixed_reference(fitted, data):
    X = data[0][:4]
    maps = fitted.localize(X)
    assert maps.shape == (4, 32, 32) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.reshape(4, -1).std(axis=1).min() > 0  # a map, not a constant
    np.testing.assert_allclose(fitted.localize(X[2:3])[0], maps[2], rtol=1e-4, atol=1e-5)
    assert fitted.net_.module_._held is None  # later passes use the live references again


def test_fewer_unlabelled_images_than_reference_size_uses_them_all(data):
    X, y = data
    keep = np.r_[np.flatnonzero(y == 1)[:4], np.flatnonzero(y == -1)[:2]]
    det = DisentangledResidualDetector(**{**TINY, "reference_size": 8}).fit(X[keep], y[keep])
    np.testing.assert_array_equal(det.reference_indices_, [0, 1, 2, 3])
    assert det.reference_images_.shape == (4, 3, 32, 32)
    assert np.isfinite(det.score_samples(X)).all()


def test_reference_images_need_a_fit():
    with pytest.raises(NotFittedError):
        DisentangledResidualDetector().reference_images_  # noqa: B018


# ------------------------------------------------------------------ heads and ablations
def test_head_scores_compose_the_anomaly_score(fitted, data):
    X = data[0][:6]
    table = fitted.head_scores(X)
    assert list(table.columns) == [*HEADS, "score"]
    expected = table.seen + table.pseudo + table.residual - table.normality
    np.testing.assert_allclose(table.score, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(table.score, -fitted.score_samples(X), rtol=1e-12)
    assert (table[list(HEADS)] >= 0).all().all()


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_ablations_are_settings_of_heads(variant, data):
    det = DisentangledResidualDetector(**TINY, **ABLATIONS[variant]).fit(*data)
    heads = ABLATIONS[variant].get("heads", HEADS)
    assert det.heads_ == heads
    assert list(det.head_scores(data[0][:3]).columns) == [*heads, "score"]
    names = {n.split(".")[1] for n, _ in det.net_.module_.named_parameters()
             if n.startswith("heads.")}
    assert names == set(heads)
    # pseudo-anomalies are made only for the heads that learn from them
    assert (det.net_.batch_transform is None) == (variant == "DRA1A")


def test_without_labelled_anomalies_the_seen_head_is_off(data):
    det = DisentangledResidualDetector(**TINY).fit(data[0])
    assert det.heads_ == ("pseudo", "residual", "normality")
    assert "seen" not in det.net_.module_.heads
    assert list(det.head_scores(data[0][:2]).columns) == ["pseudo", "residual", "normality",
                                                          "score"]


def test_seen_head_alone_without_labels_says_what_to_do(data):
    det = DisentangledResidualDetector(**TINY, heads=("seen",))
    with pytest.raises(ValueError, match="y labels none.*add 'pseudo' to heads"):
        det.fit(data[0])


@pytest.mark.parametrize("heads", [(), ("seen", "seen"), ("sen",), ["seen", 3]])
def test_bad_heads_are_named(heads, data):
    with pytest.raises(ValueError, match="'heads' parameter of DisentangledResidualDetector"):
        DisentangledResidualDetector(**TINY, heads=heads).fit(*data)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"heads": "seen"}, "heads"),
        ({"reference_size": 0}, "reference_size"),
        ({"pseudo_probability": 1.5}, "pseudo_probability"),
        ({"anomaly_share": 1.0}, "anomaly_share"),
        ({"divergence": "hellinger"}, "divergence"),
        ({"margin": 0.0}, "margin"),
    ],
)
def test_invalid_parameters_are_named(params, match, data):
    with pytest.raises(ValueError, match=match):
        DisentangledResidualDetector(**{**TINY, **params}).fit(*data)


def test_auto_offset_is_devnet_rule_from_the_normal_targets(fitted, data):
    assert fitted.offset_ == pytest.approx(-(1.96 - 5.0))
    det = DisentangledResidualDetector(**TINY, heads=("seen", "pseudo", "residual"),
                                       margin=4.0).fit(*data)
    assert det.offset_ == pytest.approx(-1.96)


# ------------------------------------------------------------------ batches
class RecordCodes(Callback):
    def initialize(self):
        self.codes = []
        return self

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.codes.append(batch[1].tolist())


def test_batches_are_two_thirds_unlabelled_one_third_labelled(data):
    det = DisentangledResidualDetector(**{**TINY, "callbacks": [RecordCodes()]}).fit(*data)
    codes = dict(det.net_.callbacks_)["RecordCodes"].codes
    assert len(codes) == 3
    assert all(c == [0.0] * 8 + [1.0] * 4 for c in codes)


def test_batch_hook_turns_about_half_of_the_unlabelled_images_into_cutmix_anomalies():
    # constant images: CutMix's colour jitter keeps a constant box, so each pasted box
    # shows which image it was cut from
    n = 40
    colours = torch.linspace(0.05, 0.8, n)
    X = colours.view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    y = torch.zeros(n)
    y[-4:] = 1
    X[-4:] = 0.95
    X_new, y_new = CutMixPseudoAnomalies(torch.Generator().manual_seed(0))(X, y)
    pseudo = y_new == PSEUDO
    assert 10 <= int(pseudo.sum()) <= 26 and torch.equal(y_new[~pseudo], y[~pseudo])
    assert torch.equal(X_new[~pseudo], X[~pseudo])
    normal_colours = set(colours[:-4][~pseudo[:-4]].tolist())
    for i in torch.nonzero(pseudo).flatten():
        pasted = set(X_new[i, 0][X_new[i, 0] != X[i, 0, 0, 0]].tolist())
        assert len(pasted) == 1 and pasted <= normal_colours  # from an image that stays normal
    assert bool((y[:-4] == 0).all()) and bool((y[-4:] == 1).all())  # inputs untouched


@pytest.mark.parametrize("probability, expected", [(0.0, 0), (1.0, 36)])
def test_batch_hook_probability_bounds(probability, expected):
    X, y = torch.rand(40, 3, 16, 16), torch.cat([torch.zeros(36), torch.ones(4)])
    X_new, y_new = CutMixPseudoAnomalies(torch.Generator(), probability=probability)(X, y)
    assert int((y_new == PSEUDO).sum()) == expected
    assert torch.equal(X_new[36:], X[36:])


# ------------------------------------------------------------------ contamination
def test_reweighting_is_a_parameter_that_changes_training(data):
    X, y = data
    plain = DisentangledResidualDetector(**TINY).fit(X, y)
    weighted = DisentangledResidualDetector(**TINY, divergence="alpha").fit(X, y)
    assert weighted.net_.criterion_.divergence == "alpha"
    assert np.isfinite(weighted.score_samples(X)).all()
    assert not np.allclose(weighted.score_samples(X), plain.score_samples(X))


def test_docstring_examples_run():
    import doctest

    import skad.detectors._dra

    result = doctest.testmod(skad.detectors._dra, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 5
