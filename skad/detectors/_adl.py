"""AdaptiveDeviationDetector: adaptive deviation learning under contamination (ADL)."""

import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._images import ImageInput
from .._io import scan_images
from .._net import PSEUDO, TrainingProgress
from ..losses import ADLLoss
from ..nn.adl import ADLModule
from ..nn.anomaly_map import gaussian_blur
from ..synthesis import PerlinAnomalySynthesizer
from ._common import feature_extractor, input_normalization
from ._trained import TrainedDetector

__all__ = ["ABLATIONS", "AdaptiveDeviationDetector"]

#: The ADL paper's ablation variants as AdaptiveDeviationDetector parameter settings.
ABLATIONS = {
    "DL": dict(soft_labels=False, classification_loss=False, segmentation_loss=False,
               divergence=None),
    "Wt-DL": dict(soft_labels=False, classification_loss=False, segmentation_loss=False),
    "DL-CE": dict(soft_labels=False, segmentation_loss=False, divergence=None),
    "SoftDL-CE": dict(segmentation_loss=False, divergence=None),
    "Wt-SoftDL-CE": dict(segmentation_loss=False),
    "full": dict(),
}


class PerlinPseudoAnomalies:
    """Training-batch hook: Perlin pseudo-anomalies with masks for the tagged slots.

    Returns ``(X, (target, masks, seg_valid))``: unlabelled images have empty
    masks, pseudo-anomalies their Perlin masks, labelled anomalies no mask
    (left out of the segmentation loss).
    """

    def __init__(self, synthesizer, generator):
        self.synthesizer = synthesizer
        self.generator = generator

    def __call__(self, X, y):
        pseudo = y == PSEUDO
        masks = torch.zeros((len(X), 1) + tuple(X.shape[-2:]), device=X.device)
        seg_valid = y != 1
        target = (y > 0).to(X.dtype)
        if bool(pseudo.any()):
            X = X.clone()
            X[pseudo], masks[pseudo] = self.synthesizer(X[pseudo], generator=self.generator)
        return X, (target, masks, seg_valid)


class AdaptiveDeviationDetector(TrainedDetector):
    """Adaptive deviation learning: deviation scoring robust to contaminated training data.

    Three backbone levels are fused at the finest one; a deviation head scores
    the fused patches (top-K mean), a classification head estimates each
    image's probability of being anomalous, and a segmentation head predicts
    pseudo-anomaly masks. Each batch is half unlabelled (possibly
    contaminated) images and half anomalies: Perlin pseudo-anomalies made from
    the unlabelled images, plus the labelled anomalies when ``y`` has any -1.
    After burn-in the deviation loss uses the classification head's
    probabilities as soft labels for the unlabelled images, the head's BCE
    target alternates with 2-means labels of the batch's deviation scores, and
    both losses are reweighted per instance (KL, reverse-KL or
    alpha-divergence with Lagrange multiplier ``lam``) so that likely
    contaminants count less. The paper's ablation variants are parameter
    settings (``skad.detectors._adl.ABLATIONS``): DL (``soft_labels=False,
    classification_loss=False, segmentation_loss=False, divergence=None``),
    Wt-DL (the same with a divergence), DL-CE, SoftDL-CE, Wt-SoftDL-CE and the
    full model (default).

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm name or module; three feature levels are used.
    pretrained : bool or path-like, default=True
    image_size : int, default=256
    out_indices : tuple of int, default=(2, 3, 4)
        The backbone's three feature levels (strides 8, 16, 32 for timm CNNs).
    fuse_channels : int or None, default=64
        Channels of the upsampled levels 2 and 3 before fusion. ``None`` keeps
        them all, as the authors' code (about 5x the backbone's compute on
        EfficientNet-Lite0); 64 keeps the fusion cheaper than the backbone.
    gamma : float, default=5.0
        Deviation-loss margin (the paper's gamma).
    lam : float, default=0.1
        Lagrange multiplier of the instance reweighting.
    alpha : float, default=0.1
        Alpha of the alpha-divergence.
    divergence : {"alpha", "kl", "reverse_kl"} or None, default="alpha"
        Instance-reweighting divergence; ``None`` turns reweighting off.
    top_k : float, default=0.1
    n_reference : int, default=5000
    burn_in : float in [0, 1), default=0.06
        Fraction of training iterations with uniform weights and hard labels.
    soft_labels : bool, default=True
        Soft deviation loss with the classification head's probabilities.
    classification_loss : bool, default=True
        Train the classification head (needed by ``soft_labels``).
    segmentation_loss : bool, default=True
        Focal loss of the segmentation head against pseudo-anomaly masks.
    kmeans_prob : float in [0, 1], default=0.6
        After burn-in, probability per batch of using ``max(y, 2-means)`` as BCE target.
    pseudo_fraction : float in [0, 1], default=0.5
        Share of the anomaly half given to Perlin pseudo-anomalies when
        anomalies are labelled (all of it when none is).
    anomaly_source : array-like, tensor, path or None, default=None
        Textures for Perlin pseudo-anomalies: images ``(n, H, W)``,
        ``(n, H, W, C)`` or ``(n, C, H, W)`` (uint8 or floats in [0, 1]), a
        ``(n, C, h, w)`` tensor, a folder of image files, or ``None`` for the
        built-in textures. Checked at the start of ``fit``.
    localization : {"segmentation", "saliency"}, default="segmentation"
        ``localize`` returns the segmentation head's anomaly probability, or
        input-gradient saliency of the deviation score.
    steps_per_epoch : int or None, default=None
    max_epochs : int, default=25
    batch_size : int, default=16
    lr : float, default=2e-4
    optimizer : type, default=torch.optim.Adam
        The optimiser class (built by skorch with ``lr`` and ``weight_decay``).
    weight_decay : float, default=1e-5
    device : str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags deviation scores above 1.96 (as DevNet), a property
        of the loss rather than of the data: the soft labels and instance
        reweighting keep many unlabelled images' scores above the reference
        mean, more so on short budgets (ELPV at 128 px after 200 steps, seed
        42: 14% of the held-out normal cells flagged with a clean training
        set, 6.6% at 10% contamination;
        ``benchmarks/results/auto_threshold.md``). To bound false alarms set
        the threshold on held-out normal images with
        :func:`skad.thresholds.calibrate`.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    callbacks : list of skorch callbacks or None, default=None

    Attributes
    ----------
    net_ : skad._net.SkadNet
    offset_ : float
    history_ : skorch.History
    device_ : str
    input_kind_ : {"images"}

    See Also
    --------
    DeviationNetworkDetector : The deviation network without contamination handling.

    References
    ----------
    .. [1] The ADL paper, ``papers/000`` of skad's references: adaptive
       deviation learning with soft labels and instance reweighting.
    """

    _parameter_constraints = {
        **TrainedDetector._parameter_constraints,
        "out_indices": [tuple, list],
        "fuse_channels": [Interval(Integral, 1, None, closed="left"), None],
        "gamma": [Interval(Real, 0, None, closed="neither")],
        "lam": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, 1, closed="left")],
        "divergence": [StrOptions({"alpha", "kl", "reverse_kl"}), None],
        "top_k": [Interval(Real, 0, 1, closed="right")],
        "n_reference": [Interval(Integral, 2, None, closed="left")],
        "burn_in": [Interval(Real, 0, 1, closed="left")],
        "soft_labels": ["boolean"],
        "classification_loss": ["boolean"],
        "segmentation_loss": ["boolean"],
        "kmeans_prob": [Interval(Real, 0, 1, closed="both")],
        "pseudo_fraction": [Interval(Real, 0, 1, closed="both")],
        "anomaly_source": "no_validation",
        "localization": [StrOptions({"segmentation", "saliency"})],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
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
        pseudo_fraction=0.5,
        anomaly_source=None,
        localization="segmentation",
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
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.out_indices = out_indices
        self.fuse_channels = fuse_channels
        self.gamma = gamma
        self.lam = lam
        self.alpha = alpha
        self.divergence = divergence
        self.top_k = top_k
        self.n_reference = n_reference
        self.burn_in = burn_in
        self.soft_labels = soft_labels
        self.classification_loss = classification_loss
        self.segmentation_loss = segmentation_loss
        self.kmeans_prob = kmeans_prob
        self.pseudo_fraction = pseudo_fraction
        self.anomaly_source = anomaly_source
        self.localization = localization
        self.steps_per_epoch = steps_per_epoch
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.device = device
        self.contamination = contamination
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    def _build_module(self, data):
        if self.soft_labels and not self.classification_loss:
            raise ValueError(
                "soft_labels=True needs classification_loss=True (the soft labels are the "
                "classification head's probabilities); set soft_labels=False too."
            )
        extractor = feature_extractor(self.backbone, self.pretrained, tuple(self.out_indices))
        mean, std = input_normalization(extractor)
        return ADLModule(extractor, top_k=self.top_k, mean=mean, std=std,
                         fuse_channels=self.fuse_channels)

    def _build_criterion(self, generator):
        return ADLLoss(
            gamma=self.gamma, n_reference=self.n_reference, divergence=self.divergence,
            lam=self.lam, alpha=self.alpha, burn_in=self.burn_in, soft_labels=self.soft_labels,
            classification_loss=self.classification_loss,
            segmentation_loss=self.segmentation_loss, kmeans_prob=self.kmeans_prob,
            generator=generator,
        )

    def _fit_model(self, data, target, *, masks, seed):
        # before any work: a bad anomaly_source fails fit at once, not at the first batch
        try:
            PerlinAnomalySynthesizer(self._anomaly_sources())
        except ValueError as exc:
            raise ValueError(f"anomaly_source: {exc}") from None
        return super()._fit_model(data, target, masks=masks, seed=seed)

    def _anomaly_sources(self):
        """``anomaly_source`` as the synthesiser takes it: None, a folder, or a tensor."""
        source = self.anomaly_source
        if source is None or isinstance(source, torch.Tensor):
            return source
        if isinstance(source, (str, os.PathLike)):
            if not os.path.isdir(source) or not scan_images(source).images:
                raise ValueError(
                    f"The 'anomaly_source' parameter of {type(self).__name__} is "
                    f"{os.fspath(source)!r}, which is not a folder of texture images; pass a "
                    "folder that holds image files, textures as an array, or None for the "
                    "built-in textures."
                )
            return source
        textures = ImageInput(source, argname="anomaly_source")
        if textures.array is None:
            raise ValueError(
                "anomaly_source is a list of image paths; put the textures in a folder and pass "
                "its path, or pass the textures as an array (n, H, W[, C])."
            )
        return textures.load(np.arange(len(textures)), None).contiguous()

    def _build_batch_transform(self, generator):
        synthesizer = PerlinAnomalySynthesizer(self._anomaly_sources(), rotate_prob=0.3)
        return PerlinPseudoAnomalies(synthesizer, generator)

    def _net_params(self):
        return {
            "optimizer__weight_decay": self.weight_decay,
            "iterator_train__steps_per_epoch": self.steps_per_epoch,
            "iterator_train__pseudo": True,  # Perlin pseudo-anomalies, with or without labels
            "iterator_train__pseudo_fraction": self.pseudo_fraction,
        }

    def _default_callbacks(self):
        return [("training_progress", TrainingProgress())]

    def _auto_offset(self, data, target, train_scores):
        return -1.96

    def _export_graph(self):
        """Score, and the segmentation map when ``localization="segmentation"``."""
        if self.localization == "saliency":
            return super()._export_graph()
        from ..nn.export import SegmentationGraph

        return SegmentationGraph(self.net_.module_, 4.0 * self.image_size / 256)

    def _localize_batch(self, x):
        module = self.net_.module_
        if self.localization == "saliency":
            return super()._localize_batch(x)
        with torch.no_grad():
            module.eval()
            seg = torch.sigmoid(module(x).seg_logit[:, 0].float())
        return gaussian_blur(seg, 4.0 * x.shape[-1] / 256)
