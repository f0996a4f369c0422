"""DisentangledResidualDetector: DRA (Ding, Pang and Shen, CVPR 2022), open-set supervised AD."""

from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._net import PSEUDO
from ..losses import DRALoss
from ..nn.dra import HEADS, DRAModule
from ..synthesis.cutmix import cutmix
from ._common import feature_extractor, input_normalization
from ._trained import TrainedDetector

__all__ = ["ABLATIONS", "HEADS", "CutMixPseudoAnomalies", "DisentangledResidualDetector"]

#: The DRA paper's ablation variants (its Table 3) as DisentangledResidualDetector settings:
#: the seen head alone, + the pseudo head, + the residual or + the normality head, all four.
ABLATIONS = {
    "DRA1A": dict(heads=("seen",)),
    "DRA2A": dict(heads=("seen", "pseudo")),
    "DRA3Ar": dict(heads=("seen", "pseudo", "residual")),
    "DRA3An": dict(heads=("seen", "pseudo", "normality")),
    "DRA": dict(),
}

#: Heads trained on pseudo-anomalies (DRA's routing); without any, none is made.
_PSEUDO_HEADS = ("pseudo", "residual", "normality")

#: DevNet's 95% one-sided N(0, 1) quantile, the automatic threshold of a deviation score.
_Z95 = 1.96


class CutMixPseudoAnomalies:
    """Training-batch hook: each unlabelled image becomes a CutMix pseudo-anomaly with chance p.

    The box is cut from one of the batch's unlabelled images that stay normal
    (from another pseudo-anomaly's image when every unlabelled image was
    drawn) and pasted into the image, as DRA does; the image is then tagged
    with the pseudo-anomaly code (2) for the loss's routing. Labelled
    anomalies are left alone.

    Parameters
    ----------
    generator : torch.Generator
        On the training device; one uniform draw per batch row, then CutMix's.
    probability : float, default=0.5
        Chance of each unlabelled image to become a pseudo-anomaly.
    """

    def __init__(self, generator, probability=0.5):
        self.generator = generator
        self.probability = probability

    def __call__(self, X, y):
        draws = torch.rand(len(y), generator=self.generator, device=self.generator.device)
        unlabelled = y == 0
        pseudo = unlabelled & (draws.to(y.device) < self.probability)
        if not bool(pseudo.any()):
            return X, y
        normal = unlabelled & ~pseudo
        sources = X[normal] if bool(normal.any()) else None
        X, y = X.clone(), y.clone()
        X[pseudo], _ = cutmix(X[pseudo], sources=sources, generator=self.generator)
        y[pseudo] = PSEUDO
        return X, y


def _reference_indices(target, size, generator):
    """Sorted indices of ``min(size, n_unlabelled)`` unlabelled images drawn without replacement."""
    unlabelled = np.flatnonzero(target == 0)
    picks = torch.randperm(len(unlabelled), generator=generator)[:size].numpy()
    return np.sort(unlabelled[picks])


class DisentangledResidualDetector(TrainedDetector):
    """Disentangled residual abnormalities (DRA): seen, pseudo and latent-residual heads.

    Open-set supervised anomaly detection: a few labelled anomalies of some
    types must help without blinding the detector to the other types. A
    trainable backbone's last feature map feeds four heads, each averaged over
    two input scales:

    - the *seen* head (1x1 conv, ``|.|``, top-K mean of the patch scores) learns
      the labelled anomalies against the unlabelled images;
    - the *pseudo* head (the same architecture) learns CutMix pseudo-anomalies
      made from the unlabelled images against them;
    - the *residual* head scores ``M_r - M_x``, the difference between the mean
      feature map ``M_r`` of ``reference_size`` reference images and the
      image's own map ``M_x`` (conv3x3, BatchNorm, ReLU, top-K head), trained
      with both kinds of anomalies: anomalies unlike anything labelled still
      leave an unusual residual;
    - the *normality* head (global average pooling, Linear, ReLU, Linear,
      ``|.|``) scores how normal the whole image is.

    The anomaly score is ``-normality + seen + pseudo + residual``
    (``score_samples`` is its negative). Each batch is ``1 - anomaly_share``
    unlabelled images, each of which becomes a CutMix pseudo-anomaly with
    probability ``pseudo_probability``, and ``anomaly_share`` labelled
    anomalies (drawn with replacement). Every head is trained with DevNet's
    deviation loss (margin ``margin``) on the samples routed to it
    (:func:`skad.losses.dra_loss`); the losses are summed. Without labelled
    anomalies the seen head is left out. The paper's ablation variants are
    settings of ``heads`` (``skad.detectors._dra.ABLATIONS``): DRA1A
    ``("seen",)``, DRA2A ``("seen", "pseudo")``, DRA3Ar ``("seen", "pseudo",
    "residual")``, DRA3An ``("seen", "pseudo", "normality")``, and the full
    model (default). :meth:`head_scores` returns every head's score;
    :meth:`localize` the gradient saliency of the anomaly score.

    Parameters
    ----------
    heads : tuple of str, default=("seen", "pseudo", "residual", "normality")
        The heads to train and score with, a non-empty subset of those four.
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm model name, or a module returning feature maps; its last level is
        used and trained (the paper: ``"resnet18"``).
    pretrained : bool or path-like, default=True
        ImageNet weights available offline (embedded for
        ``"efficientnet_lite0"``), ``False`` for random init, or a weights file.
    image_size : int, default=224
        Side of the square images the network sees.
    top_k : float, default=0.1
        Fraction of patches averaged by the seen, pseudo and residual heads.
    scales : tuple of float, default=(1.0, 0.5)
        Input scales whose head scores are averaged.
    reference_size : int, default=5
        Number ``N_r`` of reference images: unlabelled training images drawn
        once in ``fit`` (all of them when there are fewer).
    margin : float, default=5.0
        Deviation-loss margin of every head.
    n_reference : int, default=5000
        Reference scores drawn from N(0, 1) for each head's deviation loss.
    pseudo_probability : float in [0, 1], default=0.5
        Chance of each unlabelled image of a batch to become a CutMix
        pseudo-anomaly. Only used when a head trains on pseudo-anomalies
        (``"pseudo"``, ``"residual"`` or ``"normality"``).
    anomaly_share : float in (0, 1), default=1/3
        Share of each batch given to labelled anomalies (at least one slot);
        the whole batch is unlabelled when no anomaly is labelled.
    divergence : {"alpha", "kl", "reverse_kl"} or None, default=None
        Instance reweighting of the unlabelled images for contaminated data
        (:func:`skad.reweighting.instance_weights` on each image's summed
        head losses, per batch); ``None`` keeps every weight at 1, as DRA.
    reweight_lam : float, default=0.1
        Lagrange multiplier of the reweighting.
    reweight_alpha : float in [0, 1), default=0.1
        Alpha of the alpha-divergence.
    steps_per_epoch : int or None, default=20
        Batches per epoch (the paper's 20); ``None`` is one pass over the
        unlabelled images.
    max_epochs : int, default=30
    batch_size : int, default=48
    lr : float, default=1e-3
        Learning rate (the paper's; the authors' code uses 2e-4).
    optimizer : type, default=torch.optim.Adam
        The optimiser class (built by skorch with ``lr`` and ``weight_decay``).
    weight_decay : float, default=1e-2
        The paper's (the authors' code uses 1e-5).
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags anomaly scores above ``1.96 - margin`` with the
        normality head and above 1.96 without it: 1.96 reference standard
        deviations above the score the training targets give a normal image
        (DevNet's rule); a float flags that fraction of the training data.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    callbacks : list of skorch callbacks or None, default=None

    Attributes
    ----------
    heads_ : tuple of str
        The heads of the fitted network: ``heads`` without ``"seen"`` when no
        anomaly was labelled.
    reference_indices_ : ndarray of shape (N_r,)
        Indices (into the training ``X``) of the reference images. The images
        themselves, resized to ``image_size``, are the float32 buffer
        ``net_.module_.reference_images`` (saved with the model);
        :attr:`reference_images_` returns them as an array.
    net_ : skad._net.SkadNet
        The trained skorch net; ``net_.module_`` is the
        :class:`~skad.nn.dra.DRAModule`.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    history_ : skorch.History
        Per-epoch training losses.
    device_ : str
        Device the net lives on.
    input_kind_ : {"images"}

    See Also
    --------
    DeviationNetworkDetector : The seen head alone (DRA1A's architecture).
    AdaptiveDeviationDetector : Deviation learning for contaminated data.

    Notes
    -----
    The reference set is drawn once in ``fit`` from the unlabelled images with
    the fit's seed and kept, as the paper describes; the authors' code redraws
    it for every batch, also at test time, which makes test scores random.
    ``M_r`` is recomputed with the network in evaluation mode whenever images
    are scored, so ``score_samples`` is deterministic and an image's score
    does not depend on the other images of its batch. During training the
    same references run through the backbone together with each batch, in
    training mode: BatchNorm normalises the references and the batch with the
    same statistics, so that a residual compares like with like, and ``M_r``
    follows the weights as they change (see :class:`~skad.nn.dra.DRAModule`).
    A reference that is in fact an anomaly (under contamination) shifts
    ``M_r`` by a fifth of its deviation; ``reference_size`` trades that risk
    against the noise of a small reference set.

    References
    ----------
    .. [1] C. Ding, G. Pang and C. Shen, "Catching both gray and black swans:
       open-set supervised anomaly detection", CVPR 2022.
       :doi:`10.1109/CVPR52688.2022.00719`

    Examples
    --------
    >>> from skad import DisentangledResidualDetector
    >>> from skad.datasets import make_defect_images
    >>> data = make_defect_images(40, image_size=32, anomaly_ratio=0.1, random_state=0)
    >>> det = DisentangledResidualDetector(
    ...     backbone="test_efficientnet", pretrained=False, image_size=32, max_epochs=1,
    ...     steps_per_epoch=2, batch_size=8, device="cpu", random_state=0)
    >>> det = det.fit(data.images, data.target)
    >>> list(det.head_scores(data.images[:2]).columns)
    ['seen', 'pseudo', 'residual', 'normality', 'score']
    >>> det.localize(data.images[:2]).shape
    (2, 32, 32)
    """

    _parameter_constraints = {
        **TrainedDetector._parameter_constraints,
        "heads": [tuple, list],
        "top_k": [Interval(Real, 0, 1, closed="right")],
        "scales": [tuple, list],
        "reference_size": [Interval(Integral, 1, None, closed="left")],
        "margin": [Interval(Real, 0, None, closed="neither")],
        "n_reference": [Interval(Integral, 2, None, closed="left")],
        "pseudo_probability": [Interval(Real, 0, 1, closed="both")],
        "anomaly_share": [Interval(Real, 0, 1, closed="neither")],
        "divergence": [StrOptions({"alpha", "kl", "reverse_kl"}), None],
        "reweight_lam": [Interval(Real, 0, None, closed="neither")],
        "reweight_alpha": [Interval(Real, 0, 1, closed="left")],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        heads=HEADS,
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=224,
        top_k=0.1,
        scales=(1.0, 0.5),
        reference_size=5,
        margin=5.0,
        n_reference=5000,
        pseudo_probability=0.5,
        anomaly_share=1 / 3,
        divergence=None,
        reweight_lam=0.1,
        reweight_alpha=0.1,
        steps_per_epoch=20,
        max_epochs=30,
        batch_size=48,
        lr=1e-3,
        optimizer=torch.optim.Adam,
        weight_decay=1e-2,
        device="auto",
        contamination="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.heads = heads
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.top_k = top_k
        self.scales = scales
        self.reference_size = reference_size
        self.margin = margin
        self.n_reference = n_reference
        self.pseudo_probability = pseudo_probability
        self.anomaly_share = anomaly_share
        self.divergence = divergence
        self.reweight_lam = reweight_lam
        self.reweight_alpha = reweight_alpha
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

    # ---------------------------------------------------------------- fitting
    def _resolve_heads(self, target):
        """``heads`` in :data:`HEADS` order, without the seen head when nothing is labelled."""
        heads = self.heads
        if (not heads or not all(isinstance(h, str) for h in heads)
                or len(set(heads)) != len(heads) or not set(heads) <= set(HEADS)):
            raise ValueError(
                f"The 'heads' parameter of {type(self).__name__} must be a non-empty tuple of "
                f"distinct names among {HEADS}, e.g. ('seen', 'pseudo'). Got {heads!r} instead."
            )
        resolved = tuple(h for h in HEADS if h in heads)
        if not np.any(target == 1):
            resolved = tuple(h for h in resolved if h != "seen")
            if not resolved:
                raise ValueError(
                    f"heads={heads!r} trains on labelled anomalies only, but y labels none; "
                    "pass y with -1 for the known anomalies, or add 'pseudo' to heads."
                )
        return resolved

    def _fit_model(self, data, target, *, masks, seed):
        self.heads_ = self._resolve_heads(target)
        self.reference_indices_ = _reference_indices(
            target, self.reference_size, torch.Generator().manual_seed(seed + 3))
        return super()._fit_model(data, target, masks=masks, seed=seed)

    def _build_module(self, data):
        extractor = feature_extractor(self.backbone, self.pretrained, (-1,))
        mean, std = input_normalization(extractor)
        return DRAModule(extractor, heads=self.heads_, top_k=self.top_k, scales=self.scales,
                         n_reference=len(self.reference_indices_), image_size=self.image_size,
                         mean=mean, std=std)

    def _train_net(self, module, dataset, target, **kwargs):
        # the references are fixed before the first step: chosen in fit, resized like X
        module.set_reference(dataset.source.load(self.reference_indices_, self.image_size))
        return super()._train_net(module, dataset, target, **kwargs)

    def _build_criterion(self, generator):
        return DRALoss(margin=self.margin, n_reference=self.n_reference, generator=generator,
                       divergence=self.divergence, lam=self.reweight_lam,
                       alpha=self.reweight_alpha)

    def _build_batch_transform(self, generator):
        if not any(h in self.heads_ for h in _PSEUDO_HEADS):
            return None  # DRA1A: no head learns from pseudo-anomalies
        return CutMixPseudoAnomalies(generator, probability=self.pseudo_probability)

    def _net_params(self):
        return {
            "optimizer__weight_decay": self.weight_decay,
            "iterator_train__steps_per_epoch": self.steps_per_epoch,
            "iterator_train__anomaly_share": self.anomaly_share,
        }

    def _auto_offset(self, data, target, train_scores):
        # a normal image's targets: 0 for each abnormality head, >= margin for the normality head
        normal = -self.margin if "normality" in self.heads_ else 0.0
        return -(normal + _Z95)

    @property
    def reference_images_(self):
        """The reference images as float32 ``(N_r, 3, image_size, image_size)`` in [0, 1]."""
        check_is_fitted(self, "net_")
        return self.net_.module_.reference_images.detach().cpu().contiguous().numpy()

    # --------------------------------------------------------------- scoring
    def _head_table(self, data):
        """``(n, 1 + len(heads_))`` float64: the anomaly score, then each head's score."""
        rows = []
        with self.net_.module_.fixed_reference():
            for out in self._module_outputs(data):
                columns = [out.score, *(getattr(out, h) for h in self.heads_)]
                rows.append(torch.stack(columns, dim=1).detach().double().cpu())
        return torch.cat(rows).numpy()

    def _anomaly_scores(self, data):
        return self._head_table(data)[:, 0]

    def head_scores(self, X):
        """The score of each head and the anomaly score of each image.

        Parameters
        ----------
        X : array-like of images or sequence of image paths
            Images of the kind used in ``fit``.

        Returns
        -------
        scores : pandas.DataFrame of shape (n_images, n_heads + 1)
            One column for each of the ``n_heads`` heads of ``heads_``
            (``seen``, ``pseudo``, ``residual``: higher = more anomalous;
            ``normality``: higher = more normal), each averaged over the input
            scales, and ``score``, the anomaly score ``-normality + seen +
            pseudo + residual`` (``-score_samples(X)``).
        """
        check_is_fitted(self, "net_")
        table = self._head_table(self._check_input(X, reset=False))
        return pd.DataFrame(table[:, 1:], columns=list(self.heads_)).assign(score=table[:, 0])

    def _export_graph(self):
        """The score with the reference maps fixed, as in scoring (:meth:`fixed_reference`)."""
        from ..nn.export import ReferenceScoreGraph

        return ReferenceScoreGraph(self.net_.module_)

    def _localize_batch(self, x):
        with self.net_.module_.fixed_reference():
            return super()._localize_batch(x)
