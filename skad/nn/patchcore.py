"""PatchCore's pieces in pure torch: greedy coreset, chunked nearest neighbours, the module.

The patch features are :class:`skad.nn.frozen.PatchEmbedding`'s, shared with PaDiM.
"""

import math

import torch

from .frozen import FrozenPatchModule
from .outputs import PatchScoreOutput

__all__ = [
    "PatchCoreModule",
    "greedy_coreset",
    "labelled_anomaly_mask",
    "nearest_neighbours",
]

#: Default cap on the number of distances held at once by :func:`nearest_neighbours`
#: (2**24 float32 entries = 64 MiB, whatever the size of the bank).
BLOCK_SIZE = 2**24

#: Distances computed by one matrix product in :func:`nearest_neighbours` (4 MiB): a block
#: that stays in cache is reduced about twice as fast as one that goes to memory.
_TILE = 2**20


def _blocks(n_queries, n_bank, block_size, min_rows=256):
    """Rows of queries and of the bank compared at once, ``rows * cols <= block_size``.

    At least ``min_rows`` queries a block where the budget allows (fewer make the
    matrix products memory-bound on the bank), then as many bank rows as fit, then
    as many more queries as fit.
    """
    rows = max(1, min(n_queries, min_rows, block_size))
    cols = max(1, min(n_bank, block_size // rows))
    rows = max(1, min(n_queries, block_size // cols))
    return rows, cols


def nearest_neighbours(queries, bank, *, k=1, block_size=BLOCK_SIZE, bank_sq_norms=None,
                       query_groups=None, bank_groups=None, return_indices=True):
    """Euclidean distances from each query to its ``k`` nearest rows of ``bank``.

    Distances are computed block by block, at most ``block_size`` query-bank
    pairs at a time (and blocks of at most 2**20 pairs, which stay in cache),
    so memory stays bounded whatever the size of the bank; the result equals
    ``torch.cdist(queries, bank).topk(k, largest=False)`` up to float32
    rounding.

    Parameters
    ----------
    queries : Tensor of shape (Q, C)
    bank : Tensor of shape (M, C)
    k : int, default=1
        Neighbours per query, at most ``M``.
    block_size : int, default=2**24
        Largest number of distances held at once (2**24 float32 = 64 MiB).
    bank_sq_norms : Tensor of shape (M,), default=None
        ``(bank ** 2).sum(1)`` if already known.
    query_groups, bank_groups : Tensor of shape (Q,) and (M,), default=None
        Group ids (e.g. source image): a query never matches a bank row of its
        own group (leave-one-group-out search). Both or neither.
    return_indices : bool, default=True
        ``False`` returns the distances only (``indices`` is None), which is
        faster with ``k=1``.

    Returns
    -------
    distances : Tensor of shape (Q, k)
        Ascending; ``inf`` where fewer than ``k`` rows are eligible.
    indices : Tensor of shape (Q, k), dtype int64, or None
        Rows of ``bank``.
    """
    n_queries, n_bank = len(queries), len(bank)
    if not 1 <= k <= n_bank:
        raise ValueError(f"k={k} must lie in [1, {n_bank}], the number of bank rows.")
    if (query_groups is None) != (bank_groups is None):
        raise ValueError("pass both query_groups and bank_groups, or neither.")
    if bank_sq_norms is None:
        bank_sq_norms = bank.pow(2).sum(1)
    rows, cols = _blocks(n_queries, n_bank, min(block_size, _TILE))
    values_only = k == 1 and not return_indices
    out_d, out_i = [], []
    for q0 in range(0, n_queries, rows):
        q = queries[q0:q0 + rows]
        best_d = best_i = None
        for b0 in range(0, n_bank, cols):
            # |b|^2 - 2 q.b; |q|^2 is constant per row and added after the selection
            d = torch.addmm(bank_sq_norms[b0:b0 + cols], q, bank[b0:b0 + cols].T, alpha=-2.0)
            if query_groups is not None:
                same = query_groups[q0:q0 + rows, None] == bank_groups[None, b0:b0 + cols]
                d.masked_fill_(same, math.inf)
            if values_only:
                d = d.amin(dim=1, keepdim=True)  # no indices: a cheaper reduction
                best_d = d if best_d is None else torch.minimum(best_d, d, out=best_d)
                continue
            if k == 1:
                d, i = d.min(dim=1, keepdim=True)
            else:
                d, i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            i = i + b0
            if best_d is not None:
                d, pick = torch.cat([best_d, d], 1).topk(min(k, best_d.shape[1] + d.shape[1]),
                                                          dim=1, largest=False)
                i = torch.cat([best_i, i], 1).gather(1, pick)
            best_d, best_i = d, i
        sq = best_d.add_(q.pow(2).sum(1, keepdim=True)).clamp_min_(0.0)
        out_d.append(sq.sqrt_())
        out_i.append(best_i)
    return torch.cat(out_d), (torch.cat(out_i) if return_indices else None)


def _update_nearest(nearest, points, sq_norms, centers, center_sq, block_size):
    """``nearest = min(nearest, squared distance to the closest of centers)``, in row blocks."""
    rows = max(1, block_size // len(centers))
    for start in range(0, len(points), rows):
        part = slice(start, start + rows)
        d = torch.addmm(center_sq, points[part], centers.T, alpha=-2.0).amin(dim=1)
        torch.minimum(nearest[part], d.add_(sq_norms[part]).clamp_min_(0.0), out=nearest[part])


def greedy_coreset(features, n_select, *, projection_dim=128, generator=None, frontier=4096,
                   block_size=BLOCK_SIZE):
    """Greedy k-center coreset: indices of ``n_select`` rows covering ``features``.

    Starting from a random row, each step adds the row farthest from those
    already selected (the minimax facility location greedy of PatchCore [1]_,
    Algorithm 1), on features randomly projected to ``projection_dim``
    dimensions (a Gaussian Johnson-Lindenstrauss projection) as in the paper.

    The selection is the exact greedy, computed in rounds so that the work is
    matrix products rather than one pass over all rows per step: a round runs
    the greedy on the ``frontier`` rows farthest from the coreset, which is
    exact for as long as its best row stays ahead of the best row outside it
    (whose distance can only have shrunk since the round began), then brings
    every row's distance up to date against all the round's picks at once.

    Parameters
    ----------
    features : Tensor of shape (n, C)
    n_select : int
        Size of the coreset, in ``[1, n]``.
    projection_dim : int or None, default=128
        Dimension of the random projection; ``None`` (or ``>= C``) measures
        distances on the features themselves.
    generator : torch.Generator, default=None
        Draws the projection and the first row (on the CPU).
    frontier : int, default=4096
        Rows considered per round; only speed depends on it.
    block_size : int, default=2**24
        Largest number of distances held at once.

    Returns
    -------
    indices : Tensor of shape (n_select,), dtype int64
        Distinct rows of ``features``, in selection order: with the same
        generator state, the coreset of a smaller ``n_select`` is a prefix.

    References
    ----------
    .. [1] K. Roth et al., "Towards total recall in industrial anomaly detection",
       CVPR 2022, Algorithm 1. :doi:`10.1109/CVPR52688.2022.01392`
    """
    n, dim = features.shape
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select={n_select} must lie in [1, {n}], the number of rows.")
    points = features.float()
    if projection_dim is not None and projection_dim < dim:
        proj = torch.randn(dim, projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ proj.to(points.device)
    sq_norms = points.pow(2).sum(1)
    first = int(torch.randint(n, (), generator=generator))
    # squared distance of every row to the coreset; -1 marks selected rows, so that they
    # are never picked again, even among duplicates at distance 0
    nearest = torch.full((n,), math.inf, device=points.device)
    _update_nearest(nearest, points, sq_norms, points[[first]], sq_norms[[first]], block_size)
    nearest[first] = -1.0
    selected = [first]
    size = min(frontier, n)
    while len(selected) < n_select:
        values, rows = nearest.topk(min(size + 1, n))
        outside = float(values[size]) if len(values) > size else -math.inf
        values, rows = values[:size].clone(), rows[:size]
        front, front_sq = points[rows], sq_norms[rows]
        picked = []
        while len(selected) + len(picked) < n_select:
            j = int(values.argmax())
            best = float(values[j])
            if best < 0.0 or best < outside:
                break  # the next pick may lie outside the frontier
            picked.append(int(rows[j]))
            d = torch.addmv(front_sq, front, front[j], alpha=-2.0).add_(front_sq[j])
            torch.minimum(values, d, out=values)
            values[j] = -1.0
        new = torch.tensor(picked, device=points.device)
        _update_nearest(nearest, points, sq_norms, points[new], sq_norms[new], block_size)
        nearest[new] = -1.0
        selected.extend(picked)
    return torch.tensor(selected, device=points.device)


def labelled_anomaly_mask(bank, anomalies, reference, *, bank_groups, reference_groups,
                          block_size=BLOCK_SIZE):
    """Bank rows closer to a labelled-anomaly patch than to any normal patch of another image.

    A contaminant's defect patches match the defects of labelled anomalies
    better than the normal patches of the other training images, whereas a
    normal patch has far more normal neighbours (all the other images) than
    anomalous ones (a few labelled images), so that its nearest normal
    neighbour is almost always the closer.

    Parameters
    ----------
    bank : Tensor of shape (M, C)
        Candidate memory-bank patches.
    anomalies : Tensor of shape (A, C)
        Patches of the labelled anomalies.
    reference : Tensor of shape (N, C)
        Patches of the unlabelled (assumed normal) images, ``bank`` drawn from them.
    bank_groups, reference_groups : Tensor of shape (M,) and (N,)
        Source image of each row: a bank patch is compared with the patches of
        the other images only.
    block_size : int, default=2**24
        See :func:`nearest_neighbours`.

    Returns
    -------
    mask : Tensor of shape (M,), dtype bool
        True for the rows to drop.
    """
    to_anomaly = nearest_neighbours(bank, anomalies, block_size=block_size)[0][:, 0]
    to_normal = nearest_neighbours(bank, reference, block_size=block_size,
                                   query_groups=bank_groups, bank_groups=reference_groups)[0][:, 0]
    return to_anomaly < to_normal


class PatchCoreModule(FrozenPatchModule):
    """PatchCore's scoring network: patch embedding and nearest-neighbour distance to a bank.

    Takes images in [0, 1] of shape ``(B, 3, S, S)`` and returns
    ``(scores, distances)``: the image anomaly score ``(B,)``, the largest
    patch distance, and the patch-distance map ``(B, h, w)``. The memory bank
    is set with :meth:`set_memory_bank`; it starts empty.

    Parameters
    ----------
    embedding : PatchEmbedding
    reweight_neighbors : int or None, default=None
        ``b`` of PatchCore's density reweighting (Eq. 7 of [1]_): the image
        score ``s*`` (distance from the most anomalous patch to its nearest bank
        patch ``m*``) is multiplied by ``1 - softmax(d)_0``, where ``d`` holds
        its distances to ``m*`` and to the ``b - 1`` bank neighbours of ``m*``.
        ``None`` keeps ``s*``.
    block_size : int, default=2**24
        See :func:`nearest_neighbours`.

    Attributes
    ----------
    memory_bank : Tensor of shape (M, C)
        Buffer.
    bank_neighbours : Tensor of shape (M, b), dtype int64
        Buffer, each bank row's ``b`` nearest bank rows, itself first
        (empty without reweighting).

    References
    ----------
    .. [1] K. Roth et al., "Towards total recall in industrial anomaly detection",
       CVPR 2022. :doi:`10.1109/CVPR52688.2022.01392`
    """

    def __init__(self, embedding, *, reweight_neighbors=None, block_size=BLOCK_SIZE):
        super().__init__(embedding)
        self.reweight_neighbors = reweight_neighbors
        self.block_size = int(block_size)
        c = embedding.channels
        self.register_buffer("memory_bank", torch.empty(0, c))
        self.register_buffer("bank_sq_norms", torch.empty(0))
        self.register_buffer("bank_neighbours", torch.empty(0, 0, dtype=torch.long))

    @torch.no_grad()
    def set_memory_bank(self, bank):
        """Replace the memory bank (and, with reweighting, the bank's neighbour lists).

        Parameters
        ----------
        bank : Tensor of shape (M, C)
        """
        device = self.memory_bank.device
        self.memory_bank = bank.detach().to(device=device, dtype=torch.float32).contiguous()
        self.bank_sq_norms = self.memory_bank.pow(2).sum(1)
        if self.reweight_neighbors is None:
            self.bank_neighbours = torch.empty(0, 0, dtype=torch.long, device=device)
            return
        k = min(int(self.reweight_neighbors), len(self.memory_bank))
        neighbours = self._search(self.memory_bank, k=k)[1]
        # itself first even among exact duplicates, as m* in Eq. 7
        rows = torch.arange(len(neighbours), device=device)
        first_is_self = neighbours[:, :1] == rows[:, None]
        neighbours[:, 0] = torch.where(first_is_self[:, 0], neighbours[:, 0], rows)
        self.bank_neighbours = neighbours

    def _search(self, queries, **kwargs):
        return nearest_neighbours(queries, self.memory_bank, block_size=self.block_size,
                                  bank_sq_norms=self.bank_sq_norms, **kwargs)

    def _density_weights(self, patches, nearest):
        """Eq. 7's ``1 - softmax(d)_0`` for ``patches (B, C)`` whose nearest bank rows are given."""
        support = self.memory_bank[self.bank_neighbours[nearest]]  # (B, b, C)
        d = torch.linalg.vector_norm(patches[:, None] - support, dim=2)
        return 1.0 - torch.softmax(d, dim=1)[:, 0]

    def score_embedding(self, embedding, *, query_groups=None, bank_groups=None):
        """Image scores and patch-distance maps of embedded images.

        Parameters
        ----------
        embedding : Tensor of shape (B, C, h, w)
        query_groups : Tensor of shape (B,), default=None
            With ``bank_groups``, a group id per image: its patches are not
            matched with bank rows of the same group (leave-own-image-out).
        bank_groups : Tensor of shape (M,), default=None

        Returns
        -------
        PatchScoreOutput
            ``score`` (B,) and ``distances`` (B, h, w).
        """
        if len(self.memory_bank) == 0:
            raise RuntimeError("the memory bank is empty; call set_memory_bank first.")
        b, c, h, w = embedding.shape
        # a view for channels-last embeddings (the detectors'), a copy otherwise
        patches = embedding.permute(0, 2, 3, 1).reshape(b * h * w, c).float()
        groups = {}
        if query_groups is not None:
            groups = dict(query_groups=query_groups.repeat_interleave(h * w),
                          bank_groups=bank_groups)
        dist = self._search(patches, return_indices=False, **groups)[0].view(b, h * w)
        scores, where = dist.max(dim=1)
        if self.reweight_neighbors is not None:
            # m* of the most anomalous patches only: the search without indices is faster
            worst = patches.view(b, h * w, c)[torch.arange(b, device=dist.device), where]
            if query_groups is not None:
                groups["query_groups"] = query_groups
            nearest = self._search(worst, **groups)[1][:, 0]
            scores = scores * self._density_weights(worst, nearest)
        return PatchScoreOutput(scores, dist.view(b, h, w))
