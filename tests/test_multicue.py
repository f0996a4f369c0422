"""MultiCueDetector: cue squashing and fusion, soft BCE targets, masks, oversampling, maps."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _helpers import make_tiny_images
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from skorch.callbacks import Callback

from skad import AdaptiveDeviationDetector, MultiCueDetector
from skad._images import ImageBatchDataset, ImageInput, check_masks
from skad._net import BalancedBatchSampler
from skad.detectors._adl import PerlinPseudoAnomalies
from skad.detectors._multicue import (
    LabelledAnomalyMasks,
    _check_cue_weights,
    _deviation_reference,
)
from skad.metrics import pixel_auroc
from skad.nn.multicue import soft_anomaly_labels
from skad.synthesis import PerlinAnomalySynthesizer

TINY = dict(backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
            batch_size=8, device="cpu", fuse_channels=8, n_reference=500, random_state=0)
E_MAX = math.log1p(math.log(2))


# ------------------------------------------------------------ cues and fusion
def test_deviation_reference_is_median_and_upper_decile_spread():
    m, r = _deviation_reference(np.arange(11.0))  # median 5, 90th percentile 9
    assert (m, r) == (5.0, 4.0)
    m, r = _deviation_reference(np.full(7, 3.0))  # no spread: a tiny positive scale
    assert m == 3.0 and 0 < r <= 3e-6


@pytest.mark.parametrize("bad", [(1.0, 2.0), (1.0, -0.1, 0.5), (0, 0, 0), (1, np.nan, 1),
                                 "abc", [[1, 2, 3]]])
def test_bad_cue_weights_raise_with_the_fix(bad):
    with pytest.raises(ValueError, match=r"'cue_weights'.*\(0\.55, 0\.10, 0\.35\)"):
        _check_cue_weights(bad)
    X, _, _ = make_tiny_images(n_normal=8, n_anomalous=0)
    with pytest.raises(ValueError, match="cue_weights"):
        MultiCueDetector(**TINY, cue_weights=bad).fit(X)


def test_soft_bce_target_replaces_two_means():
    # The BCE target after burn-in is min(1, y + u) with probability kmeans_prob.
    deviation = torch.tensor([0.0, 1.0, 3.0, 4.0])
    outputs = (deviation, torch.zeros(4), torch.zeros(4, 1, 4, 4))
    target = torch.tensor([0.0, 0.0, 0.0, 1.0])
    y_true = (target, torch.zeros(4, 1, 4, 4), torch.ones(4, dtype=torch.bool))
    kw = dict(soft_labels=False, segmentation_loss=False, divergence=None, burn_in=0.0,
              n_reference=500)
    always = MultiCueDetector(**kw, kmeans_prob=1.0)._build_criterion(torch.Generator())
    never = MultiCueDetector(**kw, kmeans_prob=0.0)._build_criterion(torch.Generator())
    always.progress = never.progress = 0.5
    soft = torch.clamp(target + soft_anomaly_labels(deviation), max=1.0)
    bce = F.binary_cross_entropy_with_logits
    diff = always(outputs, y_true) - never(outputs, y_true)
    assert torch.allclose(diff, bce(torch.zeros(4), soft) - bce(torch.zeros(4), target),
                          atol=1e-6)


# ------------------------------------------------------------------ masks
def test_check_masks_validates_shape_and_values():
    images = ImageInput(np.zeros((4, 8, 6), dtype=np.uint8))
    target = np.array([0, 1, 0, 1])
    masks = np.zeros((4, 8, 6), dtype=np.uint8)
    masks[1, 2:4, 2:4] = 1
    masks[0] = 7  # rows of unlabelled images are not used
    rows, used = check_masks(masks, images, target)
    assert rows.tolist() == [1, 3] and used.dtype == bool and used.shape == (2, 8, 6)
    assert used[0].sum() == 4 and used[1].sum() == 0
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        check_masks(masks[:3], images, target)
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        check_masks(masks[..., None], images, target)
    with pytest.raises(ValueError, match="images' resolution"):
        check_masks(np.zeros((4, 8, 8)), images, target)
    with pytest.raises(ValueError, match="masks > 0"):
        check_masks(masks * 255, images, target)
    with pytest.raises(ValueError, match="images"):
        check_masks(masks, torch.zeros(4, 3), target)


def test_dataset_hands_resized_masks_of_labelled_anomalies_to_training_batches():
    X = np.zeros((3, 16, 16), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[2, :8, :8] = True
    target = np.array([0, 0, 1])
    dataset = ImageBatchDataset(ImageInput(X), target, image_size=8,
                                masks=check_masks(masks, ImageInput(X), target))
    batch, (codes, batch_masks) = dataset.__getitems__([(0, 0), (2, 1), (1, 2)])
    assert codes.tolist() == [0.0, 1.0, 2.0] and batch_masks.shape == (3, 1, 8, 8)
    # resized as the images (antialiased): soft edges, area kept (64 pixels / 4)
    assert batch_masks[1, 0, :3, :3].min() == 1 and batch_masks[1, 0, 5:].max() == 0
    assert batch_masks[1].sum().item() == pytest.approx(16.0)
    assert batch_masks[[0, 2]].max() == 0
    _, plain = dataset.__getitems__([0, 2])  # inference: targets only
    assert torch.equal(plain, torch.tensor([0.0, 1.0]))


def test_labelled_masks_join_the_segmentation_loss():
    gen = torch.Generator().manual_seed(0)
    adl_hook = PerlinPseudoAnomalies(PerlinAnomalySynthesizer(), gen)
    hook = LabelledAnomalyMasks(adl_hook)
    X = torch.rand(4, 3, 16, 16)
    codes = torch.tensor([0.0, 2.0, 1.0, 1.0])
    label_masks = torch.zeros(4, 1, 16, 16)
    label_masks[2, :, 3:9, 3:9] = 1
    label_masks[0] = 1  # an unlabelled row's mask is ignored
    X_new, (target, masks, valid) = hook(X, [codes, label_masks])
    assert torch.equal(target, torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert valid.all()
    assert masks[0].sum() == 0 and masks[1].sum() > 0
    assert torch.equal(masks[2], label_masks[2]) and masks[3].sum() == 0
    assert torch.equal(X_new[2:], X[2:])
    # without masks: ADL's behaviour, labelled anomalies out of the segmentation loss
    _, (_, _, valid) = hook(X, codes)
    assert valid.tolist() == [True, True, False, False]


class _RecordBatches(Callback):
    def initialize(self):
        self.batches_ = []
        return self

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.batches_.append(batch[1])


def test_fit_masks_reach_the_training_batches():
    X, is_anomaly, masks = make_tiny_images(n_normal=16, n_anomalous=4)
    y = np.where(is_anomaly, -1, 1)
    record = _RecordBatches()
    det = MultiCueDetector(**TINY, callbacks=[record]).fit(X, y, masks=masks)
    batches = dict(det.net_.callbacks_)[f"{_RecordBatches.__name__}"].batches_
    assert batches
    for codes, batch_masks in batches:
        labelled = codes == 1
        assert labelled.any()
        areas = batch_masks[labelled].flatten(1).sum(1)
        assert (areas > 0).all() and batch_masks[~labelled].sum() == 0
    plain = MultiCueDetector(**TINY).fit(X, y)
    assert not np.array_equal(plain.score_samples(X), det.score_samples(X))


# ------------------------------------------------------- oversampling share
@pytest.mark.parametrize("n_unlabelled, n_labelled, batch_size, fraction", [
    (90, 8, 16, 7 / 8),  # 18 copies among 108: 1.33 of 8 slots -> 1
    (600, 10, 16, 7 / 8),  # 120 copies among 720: a sixth of 8 slots -> 1
    (600, 10, 64, 27 / 32),  # a sixth of 32 slots -> 5
    (20, 4, 8, 3 / 4),  # 4 copies (the labelled themselves) among 24: 0.67 of 4 -> 1
    (30, 2, 4, 1 / 2),  # 6 copies among 36: 0.33 of 2 slots, still 1
    (20, 0, 8, 1.0),
])
def test_auto_pseudo_fraction_gives_labelled_anomalies_their_share(
        n_unlabelled, n_labelled, batch_size, fraction):
    target = np.r_[np.zeros(n_unlabelled), np.ones(n_labelled)].astype(int)
    det = MultiCueDetector(batch_size=batch_size)
    params = det._sampler_params(target)
    assert params["iterator_train__pseudo_fraction"] == pytest.approx(fraction)
    sampler = BalancedBatchSampler(target, batch_size, steps_per_epoch=3, pseudo=True,
                                   pseudo_fraction=params["iterator_train__pseudo_fraction"],
                                   generator=torch.Generator().manual_seed(0))
    for batch in sampler:
        codes = np.array([c for _, c in batch])
        expected = round((1 - fraction) * (batch_size // 2))
        assert (codes == 1).sum() == expected
    assert MultiCueDetector(pseudo_fraction=0.5)._sampler_params(target) == {}


# ------------------------------------------------------- the estimator
def test_shares_every_adl_parameter_and_default():
    # MultiCue trains as ADL: a parameter or default added to ADL belongs in its signature too
    adl = AdaptiveDeviationDetector().get_params()
    mc = MultiCueDetector().get_params()
    assert set(adl) <= set(mc), f"add {sorted(set(adl) - set(mc))} to MultiCueDetector"
    differing = {k for k in adl if adl[k] != mc[k]}
    assert differing == {"localization", "pseudo_fraction"}, "align MultiCueDetector's defaults"


def test_cue_scores_fuse_into_score_samples():
    X, is_anomaly, masks = make_tiny_images(n_normal=16, n_anomalous=4)
    y = np.where(is_anomaly, -1, 1)
    det = MultiCueDetector(**TINY, cue_weights=[2, 1, 1]).fit(X, y, masks=masks)
    np.testing.assert_allclose(det.cue_weights_, [0.5, 0.25, 0.25])
    cues = det.cue_scores(X)
    assert isinstance(cues, pd.DataFrame) and cues.shape == (len(X), 4)
    assert list(cues.columns) == ["deviation", "uncertainty", "segmentation", "fused"]
    assert ((cues >= 0) & (cues <= 1 + 1e-6)).all().all()
    np.testing.assert_allclose(cues["fused"], -det.score_samples(X))
    geo = np.exp(np.log(cues.iloc[:, :3] + 1e-6) @ det.cue_weights_)
    np.testing.assert_allclose(cues["fused"], geo, rtol=1e-10)
    assert det.offset_ == -0.5  # contamination="auto": fused score 0.5


def test_deviation_cue_is_zero_for_the_typical_unlabelled_image_and_saturates_at_the_top():
    X, is_anomaly, masks = make_tiny_images(n_normal=30, n_anomalous=4)
    y = np.where(is_anomaly, -1, 1)
    det = MultiCueDetector(**TINY).fit(X, y)
    raw = det._raw_cue_table(det._check_input(X, reset=False))[:, 0].numpy()
    # the labelled anomalies stay out of the reference
    np.testing.assert_allclose(det.deviation_reference_, _deviation_reference(raw[y == 1]))
    cue = det.cue_scores(X[y == 1])["deviation"].to_numpy()
    assert np.mean(cue == 0) >= 0.5  # at or below the median
    assert 0 < np.mean(cue == 1) <= 0.1 + 1 / len(cue)  # the upper decile
    assert ((cue > 0) & (cue < 1)).any()


def test_float_contamination_sets_the_offset_from_the_fused_training_scores():
    X, is_anomaly, _ = make_tiny_images(n_normal=16, n_anomalous=4)
    det = MultiCueDetector(**TINY, contamination=0.2).fit(X, np.where(is_anomaly, -1, 1))
    assert det.offset_ == pytest.approx(np.percentile(det.score_samples(X), 20.0), abs=1e-9)
    assert np.mean(det.predict(X) == -1) == pytest.approx(0.2, abs=1 / len(X))


def test_single_cue_weights_score_by_that_cue():
    X, is_anomaly, _ = make_tiny_images(n_normal=16, n_anomalous=4)
    y = np.where(is_anomaly, -1, 1)
    det = MultiCueDetector(**TINY, cue_weights=(0, 0, 1)).fit(X, y)
    cues = det.cue_scores(X)
    np.testing.assert_allclose(-det.score_samples(X), cues["segmentation"] + 1e-6)


def test_grid_search_tunes_the_cue_weights_and_splits_the_masks():
    X, is_anomaly, masks = make_tiny_images(n_normal=20, n_anomalous=4)
    y = np.where(is_anomaly, -1, 1)
    grid = GridSearchCV(
        MultiCueDetector(**TINY), {"cue_weights": [(0.55, 0.10, 0.35), (1, 0, 0)]},
        scoring="roc_auc", cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=0),
        error_score="raise",
    ).fit(X, y, masks=masks)  # masks are indexed per sample like X and y
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert grid.best_params_["cue_weights"] in [(0.55, 0.10, 0.35), (1, 0, 0)]


# --------------------------------------------------------------- localise
@pytest.mark.parametrize("localization", ["saliency", "segmentation"])
def test_localize_maps_are_non_negative_float32_at_input_size(localization):
    X, is_anomaly, _ = make_tiny_images(n_normal=12, n_anomalous=2)
    det = MultiCueDetector(**TINY, localization=localization).fit(X, np.where(is_anomaly, -1, 1))
    maps = det.localize(X[:3, :28, :30])
    assert maps.shape == (3, 28, 30) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1


def test_gradient_maps_find_the_planted_square(global_random_seed):
    X, is_anomaly, masks = make_tiny_images(n_normal=40, n_anomalous=12)
    y = np.where(is_anomaly, -1, 1)
    train, test = np.r_[0:32, 40:44], np.r_[32:40, 44:52]
    det = MultiCueDetector(**{**TINY, "max_epochs": 10, "random_state": global_random_seed},
                           steps_per_epoch=8, lr=5e-4)
    det.fit(X[train], y[train], masks=masks[train])
    maps, held_out = det.localize(X[test]), masks[test]
    # worst seen over seeds 0-5: square/background ratio 1.34, pixel AUROC 0.886
    for m, square in zip(maps[8:], held_out[8:]):
        assert m[square].mean() > 1.1 * m[~square].mean()
    assert pixel_auroc(held_out, maps) >= 0.8
