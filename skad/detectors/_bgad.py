"""BoundaryGuidedDetector: BGAD (Yao et al., CVPR'23), flows on frozen features and a boundary."""

from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from .._images import ImageInput
from .._net import TrainingProgress
from ..losses import BGADLoss
from ..nn.bgad import BGADFlows, BGADModule, level_conditions
from ..nn.frozen import FrozenLevels
from ..synthesis import PerlinAnomalySynthesizer, copy_paste
from ._common import feature_extractor, input_normalization, seeded
from ._frozen import FeatureCache, FrozenFeatureDetector, tukey_offset
from ._trained import TrainedDetector

__all__ = ["ABLATIONS", "BoundaryGuidedDetector"]

#: The benchmark's ablations as parameter settings (``y`` decides whether labels are used).
ABLATIONS = {
    "ML only": dict(lam=0.0, pseudo_anomalies=None),
    "+ boundary": dict(anomaly_top_k=None),
    "+ MIL": dict(),
    "+ reweighting": dict(divergence="alpha"),
}

#: A level's cell is an anomalous vector when this share of it is masked (area average).
_MASK_SHARE = 0.5


class FlowTrainingSet(torch.utils.data.Dataset):
    """Training batches of feature vectors, sampled from cached feature levels.

    Indices are ``(index, code)`` pairs of :class:`skad._net.BalancedBatchSampler`
    over ``target`` (0 unlabelled, 1 anomaly). An image contributes
    ``p = n_positions`` random positions per level (all when the level has
    fewer), each a vector, its positional encoding and a code: 0 normal (an
    unlabelled image, or an unmasked cell of a masked anomaly), 1 anomalous
    (a masked cell), 2 candidate (any cell of an anomaly without a mask; the
    loss picks its least likely ones). A batch of ``b`` images is
    ``X = ((vectors (b, p, C_l), conditions (b, p, cond_dim)) per level)``
    and ``y = (codes (b, p) per level)``.

    Parameters
    ----------
    caches : list of FeatureCache
        The training images' cache, then optionally the pseudo-anomalies';
        indices run through them in order.
    target : ndarray of shape (n,)
        Sampler codes of all images of ``caches``.
    masks : dict of int to Tensor (1, S, S)
        Masks of the anomalies that have one, by index.
    n_positions : int
        Positions per image and level.
    cond_dim : int
        Width of the positional encodings.
    generator : torch.Generator
        Draws the positions (CPU).
    standardize : callable or None, default=None
        ``(level, maps) -> maps`` applied to each level's feature maps before
        sampling (:meth:`skad.nn.bgad.BGADFlows.standardize`).
    """

    def __init__(self, caches, target, *, masks, n_positions, cond_dim, generator,
                 standardize=None):
        self.caches = caches
        self.standardize = standardize
        self.target = torch.as_tensor(np.asarray(target), dtype=torch.float32)
        self.masks = masks
        self.n_positions = n_positions
        self.cond_dim = cond_dim
        self.generator = generator
        self._conditions = {}

    def __len__(self):
        return len(self.target)

    def _features(self, index):
        parts, start = [], 0
        for cache in self.caches:
            local = [i - start for i in index if start <= i < start + len(cache)]
            if local:
                parts.append(cache.get(local))
            start += len(cache)
        return tuple(torch.cat(level) for level in zip(*parts))  # in index order (sorted)

    def _condition(self, h, w, device):
        key = (h, w, str(device))
        if key not in self._conditions:
            self._conditions[key] = level_conditions(h, w, self.cond_dim, device=device)
        return self._conditions[key]

    def __getitems__(self, items):
        order = sorted(range(len(items)), key=lambda k: int(items[k][0]))
        index = [int(items[k][0]) for k in order]
        codes = [int(items[k][1]) for k in order]
        levels = self._features(index)
        X, y = [], []
        for k, f in enumerate(levels):
            if self.standardize is not None:
                f = self.standardize(k, f)
            b, c, h, w = f.shape
            n_cells = h * w
            p = min(self.n_positions, n_cells)
            keys = torch.rand(b, n_cells, generator=self.generator)
            pos = keys.argsort(dim=1)[:, :p].to(f.device)  # without replacement, per image
            cells = f.permute(0, 2, 3, 1).reshape(b, n_cells, c)
            vectors = torch.gather(cells, 1, pos[..., None].expand(-1, -1, c))  # (b, p, c)
            conditions = self._condition(h, w, f.device)[pos]  # (b, p, cond_dim)
            vec_codes = torch.zeros(b, p, dtype=torch.long, device=f.device)
            for row, (i, code) in enumerate(zip(index, codes)):
                if code == 0:
                    continue
                mask = self.masks.get(i)
                if mask is None:
                    vec_codes[row] = 2
                else:
                    cell_mask = F.interpolate(mask[None].to(f.device), size=(h, w),
                                              mode="area").reshape(-1)
                    vec_codes[row] = (cell_mask[pos[row]] >= _MASK_SHARE).long()
            X.append((vectors.float(), conditions))
            y.append(vec_codes)
        # every tensor of X has the batch's images first (skorch reads the batch size there)
        return tuple(X), tuple(y)


class BoundaryGuidedDetector(FrozenFeatureDetector, TrainedDetector):
    """BGAD: normalizing flows on frozen features, with an explicit boundary placed by anomalies.

    A frozen pretrained encoder gives three feature levels; every training
    image is encoded once and its features cached. One conditional
    normalizing flow per level (8 affine coupling blocks, conditioned on a
    128-d positional encoding) learns the density of the unlabelled images'
    feature vectors by maximum likelihood. After ``boundary_start`` of
    training the boundary-guided semi-push-pull loss joins it: the normal
    boundary ``b_n`` is the ``beta``-quantile of the normal vectors'
    normalised log-likelihoods ``s = log p / alpha_n`` (per dimension), normal
    vectors below ``b_n`` are pulled up to it and anomalous vectors above
    ``b_n - tau`` are pushed below that, with weight ``lam``. Anomalous vectors
    come from the labelled anomalies: the cells their masks cover when
    ``fit`` gets ``masks``, and otherwise -- image-level labels only, as on
    ELPV -- each labelled anomaly's ``anomaly_top_k`` share of least likely
    vectors at each step (multiple-instance learning, skad's extension), and
    from pseudo-anomalies made once per fit (see ``pseudo_anomalies``).

    The anomaly map is ``n_levels - sum_k exp(l_k - c_k)`` of the per-level
    log-likelihood maps ``l_k`` (upsampled to the finest level), with shifts
    ``c_k`` fixed at fit time: the largest log-likelihood of an unlabelled
    training vector of level ``k`` (never a test-set statistic). The image
    score is the maximum of the map upsampled and smoothed (``sigma``), or
    the mean of its ``top_k`` largest share.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        timm model name, or a module returning feature maps.
    pretrained : bool or path-like, default=True
        ImageNet weights available offline (embedded for
        ``"efficientnet_lite0"``), ``False`` for random init, or a weights file.
    image_size : int, default=128
        Side of the square images the encoder sees.
    out_indices : tuple of int, default=(2, 3, 4)
        The three feature levels: strides 8, 16 and 32 for EfficientNet-Lite0
        (40, 112 and 320 channels). On ELPV at 128 px they scored higher than
        the paper's strides 4/8/16 (``(1, 2, 3)``) in the same budget and cost
        a quarter of the flow evaluations (``benchmarks/results/bgad.md``).
    cond_dim : int, default=128
        Width of the positional encoding.
    n_blocks : int, default=8
        Coupling blocks per flow.
    clamp : float, default=1.9
        Soft clamp of the coupling log-scales.
    alpha_n : float, default=10.0
        Normaliser ``alpha_n`` of the log-likelihoods in the boundary loss.
    beta : float in (0, 1), default=0.05
        Quantile ``beta`` of the normal boundary (the paper's text says 1%,
        its code's default is 5%).
    tau : float, default=0.1
        Margin ``tau`` between the normal and the abnormal boundary.
    lam : float, default=1.0
        Weight ``lambda`` of the boundary loss; 0 trains by maximum likelihood
        alone.
    boundary_start : float in [0, 1), default=0.2
        Share of training before the boundary loss starts (phase 1).
    anomaly_top_k : float in (0, 1] or None, default=0.1
        Share of a mask-less labelled anomaly's vectors taken as anomalous at
        each step; None leaves such anomalies out.
    divergence : {"alpha", "kl", "reverse_kl"} or None, default=None
        Instance reweighting of the unlabelled images' likelihood terms in
        phase 2 (ADL's closed forms on each image's mean negative
        log-likelihood): likely contaminants count less. None: uniform.
    reweight_lam : float, default=0.1
        Lagrange multiplier of the reweighting.
    pseudo_anomalies : {"auto", "perlin", "copy_paste"} or None, default="auto"
        Pseudo-anomalies with masks, made once per fit from ``n_pseudo``
        unlabelled training images and encoded once: ``"copy_paste"``
        pastes cut-outs of the masked labelled anomalies (BGAD's RPAG, needs
        masks), ``"perlin"`` Perlin-mask textures; ``"auto"`` is
        ``"copy_paste"`` when labelled anomalies have masks, ``"perlin"``
        when no anomaly is labelled, and none otherwise (mask-less labels
        use the multiple-instance rule instead).
    n_pseudo : int, default=64
        Pseudo-anomalies per fit.
    anomaly_source : array-like, path or None, default=None
        Textures of the Perlin pseudo-anomalies (``None``: built-in textures).
    n_positions : int, default=256
        Positions per image and level in a training batch.
    center : {"channel", "position"}, default="channel"
        Features are standardised before the flows (skad's addition; it
        speeds up training and shifts each level's log-likelihoods by a
        constant): centred on each channel's mean over the unlabelled
        training images (``"channel"``) or on their mean at each position of
        the level's grid (``"position"``, PaDiM's view), and divided by each
        channel's spread.
    sigma : float, default=4.0
        Gaussian smoothing of the map, in pixels at 224 px.
    top_k : float in (0, 1] or None, default=None
        Image score = mean of that share of the smoothed map's largest pixels;
        None takes the maximum (the paper).
    map : {"likelihood", "log_likelihood"}, default="likelihood"
        The anomaly map: ``n_levels - sum_k exp(l_k - c_k)`` (the paper's,
        above) or ``-sum_k (l_k - c_k)``, the negative joint log-likelihood of
        the levels (ranks the tails differently; see the benchmark).
    steps_per_epoch : int or None, default=40
        Batches per epoch; ``None`` is one pass over the unlabelled images.
    max_epochs : int, default=5
        With ``steps_per_epoch``: 200 batches of 32 images, about 2 minutes
        for ELPV's 1,266 training images at 128 px on two CPU cores.
    batch_size : int, default=32
        Images per batch (half unlabelled, half anomalies when there are any).
    lr : float, default=1e-3
    optimizer : type, default=torch.optim.Adam
    weight_decay : float, default=0.0
    device : {"auto", "cpu", "cuda"} or str, default="auto"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"`` flags images scoring above the upper Tukey fence
        ``Q3 + 1.5 IQR`` of the unlabelled training images' (in-sample)
        scores; a float flags that fraction of the training data.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    callbacks : list of skorch callbacks or None, default=None

    Attributes
    ----------
    module_ : skad.nn.bgad.BGADModule
        The frozen encoder and the flows.
    net_ : skad._net.SkadNet
        The skorch net that trained the flows (``net_.module_`` is
        ``module_.flows``).
    history_ : skorch.History
    offset_ : float
    device_ : str
    input_kind_ : "images"

    See Also
    --------
    PaDiMDetector : one Gaussian per position instead of a flow, no labels.
    PatchCoreDetector : nearest-neighbour distances, no labels.

    Notes
    -----
    The features of the training images are kept in memory during ``fit``:
    ``n_images * sum_k C_k * (image_size / r_k) ** 2`` floats, 213 MB for
    1,266 images at 128 px with the default levels (four times that at
    256 px). The paper trains 25 meta-epochs of 8 sub-epochs at 512 px on a
    GPU; the defaults here fit ELPV's 1,266 images at 128 px in minutes on a
    CPU.

    References
    ----------
    .. [1] X. Yao, R. Li, J. Zhang, J. Sun and C. Zhang, "Explicit Boundary
       Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly
       Detection", CVPR 2023.
    .. [2] D. Gudovskiy, S. Ishizaka and K. Kozuka, "CFLOW-AD: Real-time
       unsupervised anomaly detection with localization via conditional
       normalizing flows", WACV 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from skad import BoundaryGuidedDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(100, 130, size=(12, 32, 32)).astype(np.uint8)
    >>> det = BoundaryGuidedDetector(backbone="test_efficientnet", pretrained=False,
    ...                              image_size=32, out_indices=(1, 2, 3), n_blocks=2,
    ...                              max_epochs=2, random_state=0).fit(X)
    >>> det.localize(X[:2]).shape
    (2, 32, 32)
    """

    _parameter_constraints = {
        **TrainedDetector._parameter_constraints,
        **FrozenFeatureDetector._parameter_constraints,
        "cond_dim": [Interval(Integral, 4, None, closed="left")],
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "clamp": [Interval(Real, 0, None, closed="neither")],
        "alpha_n": [Interval(Real, 0, None, closed="neither")],
        "beta": [Interval(Real, 0, 1, closed="neither")],
        "tau": [Interval(Real, 0, None, closed="left")],
        "lam": [Interval(Real, 0, None, closed="left")],
        "boundary_start": [Interval(Real, 0, 1, closed="left")],
        "anomaly_top_k": [Interval(Real, 0, 1, closed="right"), None],
        "divergence": [StrOptions({"alpha", "kl", "reverse_kl"}), None],
        "reweight_lam": [Interval(Real, 0, None, closed="neither")],
        "pseudo_anomalies": [StrOptions({"auto", "perlin", "copy_paste"}), None],
        "n_pseudo": [Interval(Integral, 1, None, closed="left")],
        "anomaly_source": "no_validation",
        "n_positions": [Interval(Integral, 1, None, closed="left")],
        "center": [StrOptions({"position", "channel"})],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "top_k": [Interval(Real, 0, 1, closed="right"), None],
        "map": [StrOptions({"likelihood", "log_likelihood"})],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=128,
        out_indices=(2, 3, 4),
        cond_dim=128,
        n_blocks=8,
        clamp=1.9,
        alpha_n=10.0,
        beta=0.05,
        tau=0.1,
        lam=1.0,
        boundary_start=0.2,
        anomaly_top_k=0.1,
        divergence=None,
        reweight_lam=0.1,
        pseudo_anomalies="auto",
        n_pseudo=64,
        anomaly_source=None,
        n_positions=256,
        center="channel",
        sigma=4.0,
        top_k=None,
        map="likelihood",
        steps_per_epoch=40,
        max_epochs=5,
        batch_size=32,
        lr=1e-3,
        optimizer=torch.optim.Adam,
        weight_decay=0.0,
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
        self.cond_dim = cond_dim
        self.n_blocks = n_blocks
        self.clamp = clamp
        self.alpha_n = alpha_n
        self.beta = beta
        self.tau = tau
        self.lam = lam
        self.boundary_start = boundary_start
        self.anomaly_top_k = anomaly_top_k
        self.divergence = divergence
        self.reweight_lam = reweight_lam
        self.pseudo_anomalies = pseudo_anomalies
        self.n_pseudo = n_pseudo
        self.anomaly_source = anomaly_source
        self.n_positions = n_positions
        self.center = center
        self.sigma = sigma
        self.top_k = top_k
        self.map = map
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
            Binary defect masks at the images' resolution; only the rows of
            the labelled anomalies are used: their masked cells are the
            anomalous vectors (and the source of copy-paste pseudo-anomalies).

        Returns
        -------
        self : object
            Fitted detector.
        """
        return self._fit(X, y, masks=masks)

    # ------------------------------------------------------------------ hooks
    def _build_module(self, data):
        extractor = feature_extractor(self.backbone, self.pretrained, tuple(self.out_indices))
        mean, std = input_normalization(extractor)
        embedding = FrozenLevels(extractor, mean=mean, std=std)
        flows = BGADFlows(embedding.channels, cond_dim=self.cond_dim, n_blocks=self.n_blocks,
                          clamp=self.clamp)
        return BGADModule(embedding, flows, sigma=self.sigma, top_k=self.top_k, map=self.map)

    def _build_criterion(self, generator=None):
        return BGADLoss(
            alpha_n=self.alpha_n, beta=self.beta, margin=self.tau, lam=self.lam,
            boundary_start=self.boundary_start, anomaly_top_k=self.anomaly_top_k or 1.0,
            divergence=self.divergence, reweight_lam=self.reweight_lam,
        )

    def _net_params(self):
        return {
            "optimizer__weight_decay": self.weight_decay,
            "iterator_train__steps_per_epoch": self.steps_per_epoch,
        }

    def _default_callbacks(self):
        return [("training_progress", TrainingProgress())]

    # ---------------------------------------------------------------- fitting
    def _pseudo_kind(self, target, masks):
        kind = self.pseudo_anomalies
        if kind == "auto":
            if masks is not None:
                return "copy_paste"
            return "perlin" if not target.any() else None
        if kind == "copy_paste" and masks is None:
            raise ValueError(
                "pseudo_anomalies='copy_paste' pastes cut-outs of labelled anomalies and needs "
                "their masks: pass fit(X, y, masks=...), or pseudo_anomalies='perlin' or None."
            )
        return kind

    def _pseudo_set(self, cache, target, masks, generator):
        """``(cache of the pseudo-anomalies, their masks)`` or ``(None, [])``."""
        kind = self._pseudo_kind(target, masks)
        if kind is None:
            return None, []
        data, size, device = cache.data, self.image_size, self.device_
        normal = np.flatnonzero(target == 0)
        picks = normal[torch.randint(len(normal), (self.n_pseudo,), generator=generator).numpy()]
        images = data.load(picks, size).to(device).contiguous()  # (n_pseudo, 3, S, S)
        device_rng = torch.Generator(device=device).manual_seed(
            int(torch.randint(2**31 - 1, (1,), generator=generator)))
        if kind == "perlin":
            synthesizer = PerlinAnomalySynthesizer(self.anomaly_source)
            images, pseudo_masks = synthesizer(images, generator=device_rng)
        else:
            rows, stack = masks
            anomalies = data.load(rows, size).to(device)
            anomaly_masks = F.interpolate(torch.from_numpy(stack).float()[:, None],
                                          size=(size, size), mode="area").to(device)
            images, pseudo_masks = copy_paste(images, anomalies, anomaly_masks,
                                              generator=device_rng)
        images = images.clamp(0.0, 1.0).cpu().numpy()
        pseudo = FeatureCache(cache.encode, ImageInput(images), image_size=size,
                              batch_size=cache.batch_size, device=device, dtype=cache.dtype)
        return pseudo, [m.float().cpu() for m in pseudo_masks]

    def _fit_head(self, cache, target, generator, masks=None):
        n = len(target)
        labelled = {}
        if masks is not None:
            rows, stack = masks
            resized = F.interpolate(torch.from_numpy(stack).float()[:, None],
                                    size=(self.image_size,) * 2, mode="area")
            labelled = {int(r): m for r, m in zip(rows, resized)}
        pseudo, pseudo_masks = self._pseudo_set(cache, target, masks, generator)
        caches = [cache] + ([pseudo] if pseudo is not None else [])
        sampler_target = np.r_[target, np.ones(len(pseudo_masks), dtype=target.dtype)]
        all_masks = {**labelled, **{n + k: m for k, m in enumerate(pseudo_masks)}}
        if self.anomaly_top_k is None:  # mask-less labelled anomalies are left out
            maskless = (sampler_target == 1) & ~np.isin(np.arange(len(sampler_target)),
                                                        list(all_masks))
            sampler_target = np.where(maskless, -1, sampler_target)
        self._standardize(cache, target)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        dataset = FlowTrainingSet(
            caches, sampler_target, masks=all_masks, n_positions=self.n_positions,
            cond_dim=self.cond_dim, generator=torch.Generator().manual_seed(seed + 3),
            standardize=self.module_.flows.standardize,
        )
        with seeded(seed, self.device_):
            self.net_ = self._train_net(
                self.module_.flows, dataset, sampler_target,
                criterion=self._build_criterion(),
                sampler_rng=torch.Generator().manual_seed(seed + 1),
            )
        self.module_.eval()
        return self._calibrate_scores(cache, target)

    def _standardize(self, cache, target):
        """Mean (per position or per channel) and per-channel spread of the unlabelled images."""
        sums = sq = None
        count = 0
        for _, levels in cache.batches(np.flatnonzero(target == 0)):
            levels = [f.double() for f in levels]
            if sums is None:
                sums = [torch.zeros_like(f[0]) for f in levels]
                sq = [torch.zeros_like(f[0]) for f in levels]
            for k, f in enumerate(levels):
                sums[k] += f.sum(0)
                sq[k] += (f * f).sum(0)
            count += len(levels[0])
        locs, scales = [], []
        for total, squares in zip(sums, sq):
            mean = total / count  # (C, h, w)
            channel_mean = mean.mean(dim=(1, 2), keepdim=True)
            loc = mean if self.center == "position" else channel_mean
            # spread around loc, pooled over the positions of each channel
            var = (squares / count - 2 * loc * mean + loc * loc).mean(dim=(1, 2), keepdim=True)
            locs.append(loc.float())
            scales.append(var.clamp_min(0).sqrt().clamp_min(1e-6).float())
        self.module_.flows.set_standardization(locs, scales)

    def _calibrate_scores(self, cache, target):
        """Fix the per-level shifts on the unlabelled training images; return their scores."""
        module = self.module_
        with torch.no_grad():
            maps = [module.flows.log_likelihood_maps(levels) for _, levels in cache.batches()]
        per_level = [torch.cat(level) for level in zip(*maps)]  # (n, h_k, w_k) each
        normal = torch.as_tensor(np.flatnonzero(target == 0), device=per_level[0].device)
        module.set_shift([float(level[normal].max()) for level in per_level])
        scores = []
        with torch.no_grad():
            for start in range(0, len(target), self.batch_size):
                part = [level[start:start + self.batch_size] for level in per_level]
                scores.append(module.score_map(module.anomaly_map(part)).double().cpu())
        return torch.cat(scores).numpy()

    def _auto_offset(self, data, target, train_scores):
        """Tukey fence of the unlabelled training images' (in-sample) scores."""
        return tukey_offset(train_scores[target == 0])
