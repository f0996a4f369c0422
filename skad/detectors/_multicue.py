"""MultiCueDetector: adaptive deviation learning with multi-cue scoring and gradient maps."""

import math
from numbers import Real

import numpy as np
import pandas as pd
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..nn.multicue import CUES, fuse_cues, raw_cues, soft_anomaly_labels, squashed_cues
from ._adl import AdaptiveDeviationDetector

__all__ = ["CUES", "MultiCueDetector"]

_LABELLED_COPIES = 0.2  # labelled anomalies count as floor(0.2 * n_unlabelled) copies


def _deviation_reference(deviation):
    """``(m, r)`` of the deviation cue: median and upper-decile spread of unlabelled scores.

    ``r = q90 - m``, floored at ``1e-6 * max(|m|, 1)`` so that constant
    scores do not divide by zero.
    """
    median, q90 = np.percentile(np.asarray(deviation, dtype=np.float64), [50.0, 90.0])
    return np.array([median, max(q90 - median, 1e-6 * max(abs(median), 1.0))])


def _check_cue_weights(cue_weights):
    """The three weights as a float array summing to 1, or a ValueError saying what to pass."""
    message = (
        "The 'cue_weights' parameter of MultiCueDetector must be three non-negative weights "
        "(deviation, uncertainty, segmentation) with a positive sum, e.g. (0.55, 0.10, 0.35). "
        f"Got {cue_weights!r} instead."
    )
    try:
        w = np.asarray(cue_weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if w.shape != (3,) or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError(message)
    return w / w.sum()


class LabelledAnomalyMasks:
    """Training-batch hook around ADL's: labelled anomalies train the mask head on their masks.

    The dataset yields ``(codes, masks)`` when ``fit`` got masks; the wrapped
    hook (:class:`~skad.detectors._adl.PerlinPseudoAnomalies`) makes the
    pseudo-anomalies and returns ``(target, masks, seg_valid)``; the labelled
    anomalies' rows then get their own masks and join the segmentation loss.
    Without masks the wrapped hook's output is returned unchanged (labelled
    anomalies stay out of the segmentation loss, as in ADL).

    Parameters
    ----------
    transform : callable
        ADL's batch hook ``(X, codes) -> (X, (target, masks, seg_valid))``.
    """

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, X, y):
        if not isinstance(y, (list, tuple)):
            return self.transform(X, y)
        codes, label_masks = y
        X, (target, masks, seg_valid) = self.transform(X, codes)
        labelled = codes == 1
        masks = torch.where(labelled[:, None, None, None], label_masks.to(masks), masks)
        return X, (target, masks, seg_valid | labelled)


class MultiCueDetector(AdaptiveDeviationDetector):
    """Multi-cue anomaly detection: ADL's network and training, three fused cues, gradient maps.

    The network and training are :class:`AdaptiveDeviationDetector`'s (soft
    deviation loss, instance reweighting, Perlin pseudo-anomalies,
    segmentation head) with three changes:

    - labelled anomalies (``y == -1``) are oversampled: they count as
      ``floor(0.2 * n_unlabelled)`` copies next to one pseudo-anomaly per
      unlabelled image, so they fill that share of the anomaly half of each
      batch (at least one slot);
    - with ``fit(X, y, masks=...)`` their defect masks train the segmentation
      head; without masks they stay out of the segmentation loss, as in ADL;
    - after burn-in the classification head's BCE target is, with probability
      ``kmeans_prob`` per batch, the soft target ``min(1, y + u)`` with
      ``u = 0.95 * sigmoid(5 * (minmax(s) - 0.5))`` of the batch's deviation
      scores, instead of ADL's 2-means labels.

    Scoring combines three cues of one forward pass: the deviation score
    ``s``, the uncertainty ``e = ln(1 + H(p))`` of the classification head's
    probability ``p`` (``H`` the binary entropy) and the segmentation cue
    ``g``, mean of the top 10% pixels of the anomaly probability map. Each is
    squashed to [0, 1] by ``phi(x; c, D) = ln(1 + min(x, D) / c) / ln(1 + D / c)``:
    ``phi((s - m) / r; 0.05, 1)``, ``phi(e; E_max / 10, E_max)`` with
    ``E_max = ln(1 + ln 2)``, and ``phi(sqrt(g); 0.05, 1)``; the fused score
    is their weighted geometric mean
    ``A = exp(sum_k w_k ln(S_k + 1e-6) / sum_k w_k)`` and
    ``score_samples = -A``. :meth:`cue_scores` returns every cue. ``m`` and
    ``r`` (``deviation_reference_``) are the median of the unlabelled
    training images' deviation scores and its distance to their 90th
    percentile: the deviation cue is 0 for the typical training image and
    saturates at its upper decile (see Notes).

    :meth:`localize` (``localization="saliency"``) returns gradient maps: the
    channel sum of ``|d(s + H + g) / d input|`` and, per cue, the channel mean
    of ``|d cue / d A|`` for the activation ``A`` of the last feature level the
    network uses (upsampled); each of the four maps is normalised (minimum to
    0, 99th percentile to 1, clipped), they are averaged and smoothed by a
    Gaussian of ``8 * image_size / 256`` pixels.

    Parameters
    ----------
    cue_weights : array-like of 3 floats, default=(0.55, 0.10, 0.35)
        Weights of the deviation, uncertainty and segmentation cues in the
        fused score; non-negative with a positive sum (only their ratios
        matter). ``(1, 0, 0)`` scores by the deviation cue alone.
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm name or module; three feature levels are used.
    pretrained : bool or path-like, default=True
        Offline ImageNet weights, random initialisation, or a weights file.
    image_size : int, default=256
        Images are resized to ``image_size x image_size``.
    out_indices : tuple of int, default=(2, 3, 4)
        The backbone's three feature levels; the last one is the activation
        differentiated by :meth:`localize`.
    fuse_channels : int or None, default=64
        Channels of the upsampled levels 2 and 3 before fusion (``None``
        keeps them all, as the authors' code).
    gamma : float, default=5.0
        Deviation-loss margin.
    lam : float, default=0.1
        Lagrange multiplier of the instance reweighting.
    alpha : float, default=0.1
        Alpha of the alpha-divergence.
    divergence : {"alpha", "kl", "reverse_kl"} or None, default="alpha"
        Instance-reweighting divergence; ``None`` turns reweighting off.
    top_k : float, default=0.1
        Fraction of the fused map's cells averaged into the deviation score.
    n_reference : int, default=5000
        Reference draws of the deviation loss.
    burn_in : float in [0, 1), default=0.06
        Fraction of training iterations with uniform weights and hard labels.
    soft_labels : bool, default=True
        Soft deviation loss with the classification head's probabilities.
    classification_loss : bool, default=True
        Train the classification head (the uncertainty cue needs it trained).
    segmentation_loss : bool, default=True
        Train the segmentation head (the segmentation cue needs it trained).
    kmeans_prob : float in [0, 1], default=0.6
        After burn-in, probability per batch of using the soft target
        ``min(1, y + u)`` as BCE target (ADL's name, where the target is
        2-means labels).
    pseudo_fraction : "auto" or float in [0, 1], default="auto"
        Share of the anomaly half given to pseudo-anomalies when anomalies
        are labelled. ``"auto"`` gives the labelled anomalies the share of
        ``floor(0.2 * n_unlabelled)`` copies among ``n_unlabelled``
        pseudo-anomalies (about 1/6), at least one slot per batch.
    anomaly_source : array-like, tensor, path or None, default=None
        Textures for Perlin pseudo-anomalies: images ``(n, H, W)``,
        ``(n, H, W, C)`` or ``(n, C, H, W)``, a ``(n, C, h, w)`` tensor, a
        folder of image files, or ``None`` for the built-in textures.
    localization : {"saliency", "segmentation"}, default="saliency"
        ``localize`` returns the multi-cue gradient maps, or the segmentation
        head's anomaly probability.
    steps_per_epoch : int or None, default=None
        Batches per epoch; ``None`` is one pass over the unlabelled images.
    max_epochs : int, default=25
    batch_size : int, default=16
        Half unlabelled images, half anomalies.
    lr : float, default=2e-4
    optimizer : type, default=torch.optim.Adam
        The optimiser class (built by skorch with ``lr`` and ``weight_decay``).
    weight_decay : float, default=1e-5
    device : str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags fused scores above 0.5, the score of an image whose
        three squashed cues all sit at mid-range. The rule is not calibrated
        on normal images -- the deviation cue is 0 at the unlabelled images'
        median and saturates at their upper decile -- and flags many of them
        (ELPV at 128 px after 200 steps, seed 42: 46% of the held-out normal
        cells with a clean training set, 37% at 10% contamination;
        ``benchmarks/results/auto_threshold.md``). Set the threshold on
        held-out normal images with :func:`skad.thresholds.calibrate`.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    callbacks : list of skorch callbacks or None, default=None

    Attributes
    ----------
    cue_weights_ : ndarray of shape (3,)
        ``cue_weights`` normalised to sum to 1, used by the fitted detector.
    deviation_reference_ : ndarray of shape (2,)
        ``(m, r)``: median ``m`` of the unlabelled training images' deviation
        scores and ``r = q90 - m``; the deviation cue squashes ``(s - m) / r``.
    net_ : skad._net.SkadNet
        The trained skorch net; ``net_.module_`` is the
        :class:`~skad.nn.adl.ADLModule`.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    history_ : skorch.History
    device_ : str
    input_kind_ : {"images"}

    See Also
    --------
    AdaptiveDeviationDetector : The deviation score alone, 2-means BCE targets.
    DeviationNetworkDetector : The deviation network without contamination handling.

    Notes
    -----
    The equations follow the authors' code as reconstructed in skad's
    ``ALGORITHMS.md`` section 3 (the paper's equations were lost in text
    extraction), with one change: the authors squash the deviation score
    itself, ``phi(s; 0.05, 1)``, which assumes that training drives normal
    images' scores to about 0 and saturates at one reference standard
    deviation. With the instance reweighting (``lam=0.1``) the unlabelled
    images keep scores of 2-5 on ELPV and on
    :func:`~skad.datasets.make_defect_images`, so every image saturated the
    cue (deviation-cue AUROC 0.5 on ``make_defect_images`` against 0.987 for
    the raw score). Measuring ``s`` from the unlabelled training images'
    median in units of their upper-decile spread restores the paper's
    regime: typical normal images near 0, the top decile and the anomalies
    saturated and ordered by the other two cues.

    References
    ----------
    .. [1] Multi-Cue Anomaly Detection and Localization under Data
       Contamination, ``papers/001`` of skad's references.

    Examples
    --------
    >>> import numpy as np
    >>> from skad import MultiCueDetector
    >>> from skad.datasets import make_defect_images
    >>> data = make_defect_images(40, image_size=32, anomaly_ratio=0.1, random_state=0)
    >>> det = MultiCueDetector(backbone="test_efficientnet", pretrained=False, image_size=32,
    ...                        max_epochs=1, batch_size=8, device="cpu", random_state=0)
    >>> det = det.fit(data.images, data.target)
    >>> list(det.cue_scores(data.images[:2]).columns)
    ['deviation', 'uncertainty', 'segmentation', 'fused']
    >>> det.localize(data.images[:2]).shape
    (2, 32, 32)
    """

    _parameter_constraints = {
        **AdaptiveDeviationDetector._parameter_constraints,
        "cue_weights": ["array-like"],
        "pseudo_fraction": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both")],
    }

    #: Gaussian smoothing of the gradient maps, in pixels at 256 px (ALGORITHMS.md section 3).
    _saliency_sigma = 8.0

    def __init__(
        self,
        *,
        cue_weights=(0.55, 0.10, 0.35),
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=256,
        out_indices=(2, 3, 4),
        fuse_channels=64,
        gamma=5.0,
        lam=0.1,
        alpha=0.1,
        divergence="alpha",
        top_k=0.1,
        n_reference=5000,
        burn_in=0.06,
        soft_labels=True,
        classification_loss=True,
        segmentation_loss=True,
        kmeans_prob=0.6,
        pseudo_fraction="auto",
        anomaly_source=None,
        localization="saliency",
        steps_per_epoch=None,
        max_epochs=25,
        batch_size=16,
        lr=2e-4,
        optimizer=torch.optim.Adam,
        weight_decay=1e-5,
        device="auto",
        contamination="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        super().__init__(
            backbone=backbone, pretrained=pretrained, image_size=image_size,
            out_indices=out_indices, fuse_channels=fuse_channels, gamma=gamma, lam=lam,
            alpha=alpha, divergence=divergence, top_k=top_k, n_reference=n_reference,
            burn_in=burn_in, soft_labels=soft_labels, classification_loss=classification_loss,
            segmentation_loss=segmentation_loss, kmeans_prob=kmeans_prob,
            pseudo_fraction=pseudo_fraction, anomaly_source=anomaly_source,
            localization=localization, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs,
            batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
            device=device,
            contamination=contamination, random_state=random_state, verbose=verbose,
            callbacks=callbacks,
        )
        self.cue_weights = cue_weights

    # ---------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, masks=None):
        """Fit the detector.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C), (n, C, H, W), or sequence of paths
            Training images, mostly normal; they may be contaminated by
            unlabelled anomalies.
        y : array-like of shape (n,), default=None
            ``-1`` marks a known anomaly, ``+1`` an unlabelled image assumed
            normal (predict's codes). ``None`` means no labelled anomaly.
        masks : array-like of shape (n, H, W), default=None
            Binary defect masks (bool or 0/1) at the images' resolution; only
            the rows of the labelled anomalies (``y == -1``) are used, to
            train the segmentation head on them. ``None`` leaves the labelled
            anomalies out of the segmentation loss.

        Returns
        -------
        self : object
            Fitted detector.
        """
        self.cue_weights_ = _check_cue_weights(self.cue_weights)
        return self._fit(X, y, masks=masks)

    def _build_criterion(self, generator):
        criterion = super()._build_criterion(generator)
        criterion.pseudo_labels = soft_anomaly_labels
        return criterion

    def _build_batch_transform(self, generator):
        return LabelledAnomalyMasks(super()._build_batch_transform(generator))

    def _sampler_params(self, target):
        if self.pseudo_fraction != "auto":
            return {}
        n_unlabelled = int(np.sum(target == 0))
        n_labelled = int(np.sum(target == 1))
        n_anomalous = self.batch_size // 2
        if n_labelled == 0:
            return {"iterator_train__pseudo_fraction": 1.0}
        copies = max(int(math.floor(_LABELLED_COPIES * n_unlabelled)), n_labelled)
        slots = max(round(n_anomalous * copies / (n_unlabelled + copies)), 1)
        return {"iterator_train__pseudo_fraction": 1.0 - slots / n_anomalous}

    def _fit_model(self, data, target, *, masks, seed):
        super()._fit_model(data, target, masks=masks, seed=seed)
        # the deviation cue is measured from the unlabelled images' typical score
        raw = self._raw_cue_table(data)
        self.deviation_reference_ = _deviation_reference(raw[:, 0].numpy()[target == 0])
        return self._fuse_cues(raw)[:, -1].numpy()

    def _auto_offset(self, data, target, train_scores):
        return -0.5

    # --------------------------------------------------------------- scoring
    def _raw_cue_table(self, data):
        """``(n, 3)`` float64 tensor: the raw cues ``(s, H, g)`` of each image."""
        return torch.cat([raw_cues(out).double().cpu() for out in self._module_outputs(data)])

    def _cue_table(self, data):
        """``(n, 4)`` float64: the squashed cues and the fused score."""
        return self._fuse_cues(self._raw_cue_table(data)).numpy()

    def _fuse_cues(self, raw):
        """``(n, 4)`` float64 tensor: squashed cues and fused score from the raw cues."""
        squashed = squashed_cues(raw, self.deviation_reference_)
        fused = fuse_cues(squashed, self.cue_weights_)
        return torch.cat([squashed, fused[:, None]], dim=1)

    def _anomaly_scores(self, data):
        return self._cue_table(data)[:, -1]

    def cue_scores(self, X):
        """The squashed cues and the fused score of each image; higher = more anomalous.

        Parameters
        ----------
        X : array-like of images or sequence of image paths
            Images of the kind used in ``fit``.

        Returns
        -------
        cues : pandas.DataFrame of shape (n, 4)
            Columns ``deviation``, ``uncertainty`` and ``segmentation`` (each
            cue squashed to [0, 1]) and ``fused`` (their weighted geometric
            mean, ``-score_samples(X)``), one row per image.
        """
        check_is_fitted(self, "net_")
        table = self._cue_table(self._check_input(X, reset=False))
        return pd.DataFrame(table, columns=[*CUES, "fused"])

    def _export_graph(self):
        """Fused score, and the segmentation map when ``localization="segmentation"``."""
        from ..nn.export import FusedCueGraph

        sigma = None if self.localization == "saliency" else 4.0 * self.image_size / 256
        return FusedCueGraph(self.net_.module_, self.deviation_reference_, self.cue_weights_,
                             sigma=sigma)

    # ---------------------------------------------------------- localisation
    def _saliency_cues(self, images):
        return raw_cues(self.net_.module_(images))

    def _saliency_layer(self):
        return self.net_.module_.extractor
