"""DeviationNetworkDetector: DevNet (Pang et al., KDD'19 / "Explainable deep few-shot AD")."""

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval
from skorch.callbacks import GradientNormClipping

from .._net import PSEUDO
from ..losses import DeviationLoss
from ..nn.devnet import DevNetModule
from ..nn.heads import MLPScorer
from ..synthesis.cutmix import cutmix
from ._common import feature_extractor, input_normalization
from ._trained import TrainedDetector

__all__ = ["DeviationNetworkDetector"]


class PseudoAnomalies:
    """Training-batch hook: turn the slots tagged as pseudo-anomalies into anomalies.

    Images get CutMix patches cut from the batch's other images (DRA's
    recipe); tabular rows get each feature permuted independently across the
    tagged rows, which breaks the dependence between features.

    Parameters
    ----------
    generator : torch.Generator
        On the training device.
    """

    def __init__(self, generator):
        self.generator = generator

    def __call__(self, X, y):
        pseudo = y == PSEUDO
        if not bool(pseudo.any()):
            return X, y
        X, y = X.clone(), y.clone()
        if X.ndim == 4:
            sources = X[~pseudo] if bool((~pseudo).any()) else X[pseudo]
            X[pseudo], _ = cutmix(X[pseudo], sources=sources, generator=self.generator)
        else:
            rows = X[pseudo]
            keys = torch.rand(rows.shape, generator=self.generator, device=rows.device)
            X[pseudo] = torch.gather(rows, 0, keys.argsort(dim=0))
        y[pseudo] = 1
        return X, y


class DeviationNetworkDetector(TrainedDetector):
    """Deviation network: top-K patch scores learned against a Gaussian prior.

    A backbone's last feature map is scored patch by patch by a 1x1
    convolution; the image's deviation score is the mean of its top-K patch
    scores, averaged over two input scales. Training pushes the scores of
    unlabelled images towards the mean of a N(0, 1) reference and those of
    anomalies at least ``margin`` standard deviations above it (the deviation
    loss). Each batch is half unlabelled images and half labelled anomalies;
    with no labelled anomaly, CutMix pseudo-anomalies made from the
    unlabelled images stand in. On tabular data ``(n_samples, n_features)`` a
    one-hidden-layer MLP replaces the backbone (DevNet's original setting) and
    pseudo-anomalies permute each feature independently across rows.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm model name, or a module returning feature maps.
    pretrained : bool or path-like, default=True
        ImageNet weights available offline (embedded for
        ``"efficientnet_lite0"``), ``False`` for random init, or a weights file.
    image_size : int, default=224
        Side of the square images the network sees.
    top_k : float, default=0.1
        Fraction of patches averaged into the image score.
    scales : tuple of float, default=(1.0, 0.5)
        Input scales whose scores are averaged.
    margin : float, default=5.0
        Deviation-loss margin ``a`` (in reference standard deviations).
    n_reference : int, default=5000
        Reference scores drawn from N(0, 1) for each loss evaluation.
    steps_per_epoch : int or None, default=None
        Batches per epoch; ``None`` is one pass over the unlabelled images.
    max_epochs : int, default=10
    batch_size : int, default=16
    lr : float, default=2e-4
        Learning rate.
    optimizer : type, default=torch.optim.Adam
        The optimiser class (built by skorch with ``lr`` and ``weight_decay``).
    weight_decay : float, default=1e-5
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags images whose deviation score exceeds 1.96 (the 95%
        one-sided quantile of the N(0, 1) reference, DevNet's rule); a float
        flags that fraction of the training data. The rule belongs to the
        loss, not to the data: the share of normal images above 1.96 depends
        on how far training has pulled their scores to the reference mean
        (ELPV at 128 px after 200 steps, seed 42: 2.4% of the held-out normal
        cells with a clean training set, 0.0% at 10% contamination, where
        it also flags almost no anomaly; ``benchmarks/results/auto_threshold.md``).
        :func:`skad.thresholds.calibrate` sets a threshold with a bounded
        false-alarm rate from held-out normal images.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    callbacks : list of skorch callbacks or None, default=None

    Attributes
    ----------
    net_ : skad._net.SkadNet
        The trained skorch net (``net_.module_`` is the torch module).
    offset_ : float
        ``decision_function = score_samples - offset_``.
    history_ : skorch.History
        Per-epoch training losses.
    device_ : str
        Device the net lives on.
    input_kind_ : {"images", "tabular"}
    n_features_in_ : int
        Only for tabular input.

    See Also
    --------
    sklearn.ensemble.IsolationForest : the outlier contract skad follows.

    References
    ----------
    .. [1] G. Pang, C. Shen, A. van den Hengel, "Deep anomaly detection with
       deviation networks", KDD 2019. :doi:`10.1145/3292500.3330871`
    .. [2] G. Pang, C. Ding, C. Shen, A. van den Hengel, "Explainable deep
       few-shot anomaly detection with deviation networks", arXiv:2108.00462.

    Examples
    --------
    >>> import numpy as np
    >>> from skad import DeviationNetworkDetector
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (40, 2)), rng.normal(6, 1, (4, 2))]
    >>> y = np.r_[np.ones(40), -np.ones(2), np.ones(2)].astype(int)
    >>> det = DeviationNetworkDetector(max_epochs=20, random_state=0).fit(X, y)
    >>> bool(det.score_samples([[6.0, 6.0]])[0] < det.score_samples([[0.0, 0.0]])[0])
    True
    """

    _accepts_tabular = True

    _parameter_constraints = {
        **TrainedDetector._parameter_constraints,
        "top_k": [Interval(Real, 0, 1, closed="right")],
        "scales": [tuple, list],
        "margin": [Interval(Real, 0, None, closed="neither")],
        "n_reference": [Interval(Integral, 2, None, closed="left")],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=224,
        top_k=0.1,
        scales=(1.0, 0.5),
        margin=5.0,
        n_reference=5000,
        steps_per_epoch=None,
        max_epochs=10,
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
        self.top_k = top_k
        self.scales = scales
        self.margin = margin
        self.n_reference = n_reference
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
        if isinstance(data, torch.Tensor):
            scale = data.std(dim=0, unbiased=False).clamp_min(1e-6)
            return MLPScorer(data.shape[1], mean=data.mean(dim=0), scale=scale)
        extractor = feature_extractor(self.backbone, self.pretrained, (-1,))
        mean, std = input_normalization(extractor)
        return DevNetModule(extractor, top_k=self.top_k, scales=self.scales, mean=mean, std=std)

    def _build_criterion(self, generator):
        return DeviationLoss(margin=self.margin, n_reference=self.n_reference,
                             generator=generator)

    def _build_batch_transform(self, generator):
        return PseudoAnomalies(generator)

    def _net_params(self):
        return {
            "optimizer__weight_decay": self.weight_decay,
            "iterator_train__steps_per_epoch": self.steps_per_epoch,
            "iterator_train__pseudo": True,  # CutMix stands in when no anomaly is labelled
        }

    def _default_callbacks(self):
        return [("gradient_clipping", GradientNormClipping(gradient_clip_value=1.0))]

    def _auto_offset(self, data, target, train_scores):
        # score_samples = -deviation; flag deviations above the 95% N(0,1) quantile.
        return -1.96
