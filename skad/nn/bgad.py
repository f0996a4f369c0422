"""BGAD's modules in pure torch: one conditional flow per frozen feature level, and the scorer.

Yao et al. (CVPR 2023; ``ALGORITHMS.md`` section 4) model the density of a
frozen CNN's feature vectors with one conditional normalizing flow per level
(:class:`skad.nn.flows.ConditionalFlow`), conditioned on a 2-D positional
encoding of each vector's position, and score a position by its likelihood.
:class:`BGADFlows` is what trains (on cached feature vectors);
:class:`BGADModule` holds the frozen encoder beside the flows and turns images
into anomaly maps and scores.
"""

import torch
from torch import Tensor, nn

from .anomaly_map import smoothed_map, upsample_maps
from .flows import ConditionalFlow, positional_encoding
from .frozen import FrozenPatchModule
from .outputs import PatchScoreOutput

__all__ = ["BGADFlows", "BGADModule", "level_conditions"]


def level_conditions(height, width, dim, *, device=None):
    """``(height * width, dim)`` positional encodings of a level's positions, row-major."""
    return positional_encoding(height, width, dim).to(device).flatten(1).T.contiguous()


class BGADFlows(nn.Module):
    """One :class:`~skad.nn.flows.ConditionalFlow` per feature level.

    Parameters
    ----------
    channels : sequence of int
        Width of each level's feature vectors.
    cond_dim : int, default=128
        Width of the positional encoding (the condition).
    n_blocks : int, default=8
        Coupling blocks per flow.
    clamp : float, default=1.9
        Soft clamp of the coupling log-scales.
    generator : torch.Generator or None, default=None
        Draws every flow's rotations and initial weights (reproducible flows).

    Notes
    -----
    ``forward(levels)`` takes one ``(vectors (..., C_l), conditions (...,
    cond_dim))`` pair per level -- vectors of maps already passed through
    :meth:`standardize` -- and returns the per-dimension log-likelihoods
    ``(...)`` of each level (any leading shape), the training step's input and
    output.
    """

    def __init__(self, channels, *, cond_dim=128, n_blocks=8, clamp=1.9, generator=None):
        super().__init__()
        self.cond_dim = int(cond_dim)
        self.flows = nn.ModuleList(
            ConditionalFlow(int(c), cond_dim=cond_dim, n_blocks=n_blocks, clamp=clamp,
                            generator=generator)
            for c in channels)
        for k, c in enumerate(channels):
            self.register_buffer(f"loc{k}", torch.zeros(int(c), 1, 1))
            self.register_buffer(f"scale{k}", torch.ones(int(c), 1, 1))

    def set_standardization(self, locs, scales):
        """Per-level ``(x - loc) / scale`` of the feature maps, applied before each flow.

        A fixed affine map of the features, fitted on the training images, so
        that every flow starts from unit-scale inputs: ``loc`` ``(C, 1, 1)``
        (per channel) or ``(C, h, w)`` (per position, the level's grid),
        ``scale`` ``(C, 1, 1)``.
        """
        for k, (loc, scale) in enumerate(zip(locs, scales)):
            setattr(self, f"loc{k}", torch.as_tensor(loc, dtype=torch.float32).clone())
            setattr(self, f"scale{k}", torch.as_tensor(scale, dtype=torch.float32).clone())

    def standardize(self, k, maps):
        """Level ``k``'s feature maps ``(B, C, h, w)``, standardised."""
        return (maps.float() - getattr(self, f"loc{k}")) / getattr(self, f"scale{k}")

    def forward(self, levels) -> tuple[Tensor, ...]:
        out = []
        for flow, (x, c) in zip(self.flows, levels):
            ll = flow.log_likelihood(x.reshape(-1, x.shape[-1]), c.reshape(-1, c.shape[-1]))
            out.append(ll.view(c.shape[:-1]))
        return tuple(out)

    def log_likelihood_maps(self, levels, *, chunk=65536) -> list[Tensor]:
        """Per-dimension log-likelihoods ``(B, h_l, w_l)`` of feature maps ``(B, C_l, h_l, w_l)``.

        Positions are scored ``chunk`` vectors at a time (bounded memory).
        """
        maps = []
        for k, (flow, f) in enumerate(zip(self.flows, levels)):
            b, c, h, w = f.shape
            cond = level_conditions(h, w, self.cond_dim, device=f.device)
            x = self.standardize(k, f).permute(0, 2, 3, 1).reshape(b * h * w, c)
            cond = cond.repeat(b, 1)
            out = torch.cat([flow.log_likelihood(x[i:i + chunk], cond[i:i + chunk])
                             for i in range(0, len(x), chunk)])
            maps.append(out.view(b, h, w))
        return maps


class BGADModule(FrozenPatchModule):
    """BGAD's scorer: frozen feature levels, one flow per level, likelihood maps.

    With per-dimension log-likelihood maps ``l_k`` of the levels and shifts
    ``c_k`` fixed at fit time, the anomaly map on the finest level's grid is
    ``n_levels - sum_k exp(l_k - c_k)`` (each level upsampled bilinearly; the
    paper's likelihood map), 0 where every level finds the position as likely
    as the likeliest normal training position, or with
    ``map="log_likelihood"`` ``-sum_k (l_k - c_k)``, the negative joint
    log-likelihood of the levels. The image score is the maximum (or, with ``top_k``, the
    mean of the largest ``top_k`` share) of that map upsampled to the input
    size and smoothed with a Gaussian of ``sigma`` pixels.

    Parameters
    ----------
    embedding : skad.nn.frozen.FrozenLevels
        The frozen encoder, its levels apart.
    flows : BGADFlows
    sigma : float, default=4.0
        Gaussian smoothing of the map, in pixels at 224 px input (scaled with
        the input size).
    top_k : float or None, default=None
        Image score = mean of that share of the smoothed map's largest
        pixels; None takes the maximum.
    map : {"likelihood", "log_likelihood"}, default="likelihood"
        The anomaly map's form (see above).

    Attributes
    ----------
    shift : Tensor of shape (n_levels,)
        ``c_k``: a buffer set after training (:meth:`set_shift`).
    """

    def __init__(self, embedding, flows, *, sigma=4.0, top_k=None, map="likelihood"):
        super().__init__(embedding)
        if map not in ("likelihood", "log_likelihood"):
            raise ValueError(f"map must be 'likelihood' or 'log_likelihood'; got {map!r}.")
        self.flows = flows
        self.sigma = float(sigma)
        self.top_k = top_k
        self.map = map
        self.register_buffer("shift", torch.zeros(len(embedding.channels)))

    def set_shift(self, shift):
        """Fix the per-level shifts ``c_k`` (e.g. the largest normal training log-likelihoods)."""
        self.shift = torch.as_tensor(shift, dtype=torch.float32, device=self.shift.device)

    def anomaly_map(self, log_likelihoods):
        """``(B, h_0, w_0)`` anomaly map from per-level log-likelihood maps (finest first)."""
        size = log_likelihoods[0].shape[-2:]
        total = 0.0
        for k, ll in enumerate(log_likelihoods):
            shifted = ll - self.shift[k]
            total = total + upsample_maps(
                torch.exp(shifted) if self.map == "likelihood" else shifted, size)
        return (len(log_likelihoods) if self.map == "likelihood" else 0.0) - total

    def score_map(self, maps):
        """Image scores ``(B,)`` of anomaly maps on the finest grid (smoothed at input size)."""
        size = tuple(s * self.embedding.reductions[0] for s in maps.shape[-2:])
        smooth = smoothed_map(maps, size, self.sigma * size[-1] / 224).flatten(1)
        if self.top_k is None:
            return smooth.amax(dim=1)
        k = max(1, int(round(self.top_k * smooth.shape[1])))
        return smooth.topk(k, dim=1).values.mean(dim=1)

    def score_embedding(self, levels) -> PatchScoreOutput:
        """Scores and maps of cached or fresh feature levels (a tuple, finest first)."""
        maps = self.anomaly_map(self.flows.log_likelihood_maps(levels))
        return PatchScoreOutput(self.score_map(maps), maps)
