"""DRA's network: seen, pseudo, latent-residual and normality heads on one trained backbone.

Ding, Pang and Shen, "Catching both gray and black swans: open-set supervised
anomaly detection" (CVPR 2022), ``ALGORITHMS.md`` section 5. Pure torch.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .heads import DeviationHead, Normalize, rescale_images
from .outputs import DRAOutput

__all__ = ["HEADS", "DRAModule", "NormalityHead", "ResidualHead"]

#: DRA's heads, in the order of :class:`~skad.nn.outputs.DRAOutput`.
HEADS = ("seen", "pseudo", "residual", "normality")


class ResidualHead(nn.Module):
    """Latent-residual head: conv3x3, BatchNorm, ReLU, then a top-K deviation head.

    Parameters
    ----------
    in_channels : int
        Channels of the residual feature map (kept by the 3x3 convolution).
    top_k : float, default=0.1
        Fraction of patches averaged into the score.
    """

    def __init__(self, in_channels, top_k=0.1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.head = DeviationHead(in_channels, top_k=top_k)

    def forward(self, residual):
        return self.head(F.relu(self.bn(self.conv(residual))))


class NormalityHead(nn.Module):
    """Normality head: global average pooling, Linear, ReLU, Linear, absolute value.

    Normal features are holistic, so this head scores the pooled feature
    vector rather than the top-K patches. Higher = more normal.

    Parameters
    ----------
    in_channels : int
        Channels of the feature map.
    hidden : int, default=256
        Hidden units (the paper's 256).
    """

    def __init__(self, in_channels, hidden=256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features):
        return self.net(features.mean(dim=(2, 3))).squeeze(1).abs()


class DRAModule(nn.Module):
    """Disentangled residual abnormality network: four heads on one backbone's last map.

    Takes images in [0, 1] of shape ``(B, 3, S, S)`` and returns a
    :class:`~skad.nn.outputs.DRAOutput`, in training and evaluation mode
    alike. At every input scale the backbone's last feature map ``M_x`` feeds

    - ``seen`` and ``pseudo``: 1x1 conv, ``|.|``, top-K mean
      (:class:`~skad.nn.heads.DeviationHead`);
    - ``residual``: :class:`ResidualHead` on ``M_r - M_x``, with ``M_r`` the
      mean feature map of the reference images at that scale;
    - ``normality``: :class:`NormalityHead` on ``M_x``.

    Each head is averaged over the scales; the composite score is
    ``-normality + seen + pseudo + residual`` over the heads present.

    Parameters
    ----------
    extractor : FeatureExtractor
        Trainable backbone; its last returned level feeds the heads.
    heads : sequence of str, default=HEADS
        Which of ``"seen"``, ``"pseudo"``, ``"residual"``, ``"normality"`` to
        build; the others are ``None`` in the output.
    top_k : float, default=0.1
        Fraction of patches averaged by the top-K heads.
    scales : tuple of float, default=(1.0, 0.5)
        Input scales whose head scores are averaged.
    n_reference : int, default=5
        Number of reference images (the shape of the ``reference_images``
        buffer until :meth:`set_reference` fills it).
    image_size : int, default=224
        Side of the reference images.
    hidden : int, default=256
        Hidden units of the normality head.
    mean, std : sequence of float or None
        Input normalisation (ImageNet statistics for pretrained backbones).

    Attributes
    ----------
    heads : torch.nn.ModuleDict
        The heads built, in the order of :data:`HEADS`.
    reference_images : Tensor of shape (n_reference, 3, image_size, image_size)
        Buffer of the reference images in [0, 1] (saved with the module).

    Notes
    -----
    Outside :meth:`fixed_reference`, every forward pass runs the reference
    images through the backbone together with the batch (one concatenated
    pass per scale), so that ``M_r`` follows the current weights and, in
    training mode, BatchNorm normalises the batch and the references with
    the same batch statistics: a residual then compares like with like, and
    the running statistics are updated once per step, from normal images
    plus the batch. Gradients flow into ``M_r`` as into ``M_x`` (``M_r`` is a
    function of the trained weights, Eq. 6 of the paper). In evaluation mode
    BatchNorm uses its running statistics, so an image's scores do not
    depend on the rest of its batch; :meth:`fixed_reference` computes
    ``M_r`` once for a whole scoring pass.
    """

    def __init__(self, extractor, *, heads=HEADS, top_k=0.1, scales=(1.0, 0.5), n_reference=5,
                 image_size=224, hidden=256, mean=None, std=None):
        super().__init__()
        heads = tuple(heads)
        if not heads or len(set(heads)) != len(heads) or not set(heads) <= set(HEADS):
            raise ValueError(
                f"The 'heads' parameter of DRAModule must be a non-empty subset of {HEADS} "
                f"without repeats. Got {heads!r} instead."
            )
        self.normalize = Normalize(mean, std)
        self.extractor = extractor
        channels = extractor.channels[-1]
        build = {
            "seen": lambda: DeviationHead(channels, top_k=top_k),
            "pseudo": lambda: DeviationHead(channels, top_k=top_k),
            "residual": lambda: ResidualHead(channels, top_k=top_k),
            "normality": lambda: NormalityHead(channels, hidden=hidden),
        }
        self.heads = nn.ModuleDict({name: build[name]() for name in HEADS if name in heads})
        self.scales = tuple(scales)
        self.register_buffer("reference_images",
                             torch.zeros(n_reference, 3, image_size, image_size))
        self._held = None

    @property
    def uses_reference(self):
        """Whether the module has the residual head (the only one that needs references)."""
        return "residual" in self.heads

    def set_reference(self, images):
        """Store the reference images.

        Parameters
        ----------
        images : Tensor of shape (N_r, 3, S, S)
            Reference images in [0, 1], ``N_r >= 1``; copied to the buffer's
            device as float32, channels-last like the training batches.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 \
                or images.shape[0] < 1:
            raise ValueError(
                "The 'images' parameter of DRAModule.set_reference must be a tensor of shape "
                f"(N_r, 3, S, S) with N_r >= 1. Got {getattr(images, 'shape', images)!r} instead."
            )
        self.reference_images = images.to(
            device=self.reference_images.device, dtype=torch.float32
        ).contiguous(memory_format=torch.channels_last)

    def reference_maps(self):
        """``M_r`` at each scale: the reference images' mean feature map, in evaluation mode.

        Computed without gradient; every submodule's train/eval flag is
        restored afterwards.

        Returns
        -------
        maps : list of Tensor of shape (1, C, h, w)
            One map per entry of ``scales``.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                refs = self.normalize(self.reference_images)
                return [self.extractor(rescale_images(refs, s))[-1].mean(dim=0, keepdim=True)
                        for s in self.scales]
        finally:
            for module, mode in modes:
                module.training = mode

    @contextlib.contextmanager
    def fixed_reference(self):
        """Context in which ``M_r`` is computed once (:meth:`reference_maps`) and reused.

        For scoring and localisation: the reference images then cost one
        backbone pass per context instead of one per batch, and every batch
        sees the very same ``M_r``.
        """
        held = self._held
        self._held = self.reference_maps() if self.uses_reference else None
        try:
            yield self
        finally:
            self._held = held

    def forward(self, x, reference_maps=None):
        """Scores of ``x``; ``reference_maps`` (from :meth:`reference_maps`) fix ``M_r``.

        Without them the references run live with the batch, unless inside
        :meth:`fixed_reference`.
        """
        held = self._held if reference_maps is None else reference_maps
        x = self.normalize(x)
        n = x.shape[0]  # not len(x): an int would fix the batch size of an exported graph
        live = self.uses_reference and held is None
        if live:
            x = torch.cat([x, self.normalize(self.reference_images)])
        totals = dict.fromkeys(self.heads, 0.0)
        for i, scale in enumerate(self.scales):
            features = self.extractor(rescale_images(x, scale))[-1]
            reference = None
            if live:
                features, reference = features[:n], features[n:].mean(dim=0, keepdim=True)
            elif self.uses_reference:
                reference = held[i]
            for name, head in self.heads.items():
                totals[name] = totals[name] + head(
                    reference - features if name == "residual" else features)
        scores = {name: total / len(self.scales) for name, total in totals.items()}
        composite = sum(-s if name == "normality" else s for name, s in scores.items())
        return DRAOutput(composite, *(scores.get(name) for name in HEADS))
