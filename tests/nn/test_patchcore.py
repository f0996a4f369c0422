"""PatchCore's torch pieces: coreset, chunked nearest neighbours, pruning, the module."""

import numpy as np
import pytest
import torch

from skad.nn.backbones import create_feature_extractor
from skad.nn.frozen import PatchEmbedding
from skad.nn.patchcore import (
    BLOCK_SIZE,
    PatchCoreModule,
    _blocks,
    greedy_coreset,
    labelled_anomaly_mask,
    nearest_neighbours,
)


def clustered(n=400, dim=12, n_clusters=8, seed=0):
    """Points around a few centres, like patch features (low intrinsic dimension)."""
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(n_clusters, dim, generator=g)
    labels = torch.randint(n_clusters, (n,), generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g)


def coverage(points, chosen):
    """Largest distance from a point to its nearest chosen point, computed exactly."""
    d = torch.cdist(points.double(), points[chosen].double(),
                    compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.min(dim=1).values.max())


def naive_greedy(points, n_select, first):
    """Textbook greedy k-center (Gonzalez) in float64, one full distance pass per step."""
    points = points.double()
    nearest = torch.full((len(points),), np.inf, dtype=torch.float64)
    chosen = [first]
    for _ in range(n_select - 1):
        nearest = torch.minimum(nearest, (points - points[chosen[-1]]).norm(dim=1))
        nearest[chosen] = -1.0
        chosen.append(int(nearest.argmax()))
    return chosen


@pytest.mark.parametrize("n_select", [1, 2, 37, 119, 120])
def test_coreset_returns_distinct_input_indices(n_select, global_random_seed):
    x = clustered(n=120, seed=global_random_seed)
    index = greedy_coreset(x, n_select, frontier=16, generator=torch.Generator().manual_seed(0))
    assert index.dtype == torch.long and index.shape == (n_select,)
    assert len(set(index.tolist())) == n_select
    assert 0 <= int(index.min()) and int(index.max()) < len(x)


def test_coreset_never_repeats_among_duplicates():
    x = clustered(n=20).repeat(3, 1)  # every point three times
    index = greedy_coreset(x, 60, frontier=5, generator=torch.Generator().manual_seed(0))
    assert sorted(index.tolist()) == list(range(60))


def test_coreset_coverage_shrinks_with_the_ratio_and_vanishes_at_one(global_random_seed):
    x = clustered(n=200, seed=global_random_seed)
    radii = []
    for ratio in [0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]:
        n_select = max(1, round(ratio * len(x)))
        g = torch.Generator().manual_seed(global_random_seed)
        radii.append(coverage(x, greedy_coreset(x, n_select, projection_dim=8, generator=g)))
    assert all(b <= a for a, b in zip(radii, radii[1:]))
    assert radii[-1] == 0.0
    assert radii[0] > radii[3] > radii[5]


def test_coreset_is_a_prefix_of_a_larger_one():
    x = clustered()
    small = greedy_coreset(x, 20, generator=torch.Generator().manual_seed(5))
    large = greedy_coreset(x, 80, generator=torch.Generator().manual_seed(5))
    assert torch.equal(small, large[:20])


@pytest.mark.parametrize("frontier", [1, 7, 64, 4096])
def test_coreset_equals_the_textbook_greedy_whatever_the_frontier(frontier, global_random_seed):
    x = clustered(n=300, dim=6, seed=global_random_seed)
    index = greedy_coreset(x, 60, projection_dim=None, frontier=frontier,
                           generator=torch.Generator().manual_seed(global_random_seed))
    assert index.tolist() == naive_greedy(x, 60, first=int(index[0]))


def test_coreset_covers_rare_patterns_that_a_random_subset_misses():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([clustered(n=1000, dim=3), 30 + torch.randn(4, 3, generator=g)])
    index = greedy_coreset(x, 30, generator=torch.Generator().manual_seed(0))
    random = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:30]
    assert (index >= 1000).any()
    assert coverage(x, index) < 0.5 * coverage(x, random)


def test_coreset_rejects_a_bad_size():
    with pytest.raises(ValueError, match="n_select=0"):
        greedy_coreset(torch.zeros(5, 2), 0)
    with pytest.raises(ValueError, match="n_select=6"):
        greedy_coreset(torch.zeros(5, 2), 6)


@pytest.mark.parametrize("block_size", [1, 7, 50, 999, 20 * 150, 2**24])
@pytest.mark.parametrize("k", [1, 3])
def test_chunked_search_equals_brute_force(block_size, k):
    g = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(20, 16, generator=g), torch.randn(150, 16, generator=g)
    dist, index = nearest_neighbours(queries, bank, k=k, block_size=block_size)
    ref_dist, ref_index = torch.cdist(queries, bank).topk(k, dim=1, largest=False)
    assert dist.shape == index.shape == (20, k)
    torch.testing.assert_close(dist, ref_dist, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(index, ref_index)  # random data: no ties


@pytest.mark.parametrize("block_size", [1, 50, 2**24])
def test_search_without_indices_gives_the_same_distances(block_size):
    g = torch.Generator().manual_seed(4)
    queries, bank = torch.randn(600, 16, generator=g), torch.randn(150, 16, generator=g)
    groups = dict(query_groups=torch.arange(600) % 4, bank_groups=torch.arange(150) % 4)
    for kwargs in ({}, groups):
        dist, index = nearest_neighbours(queries, bank, block_size=block_size, **kwargs)
        fast, none = nearest_neighbours(queries, bank, block_size=block_size,
                                        return_indices=False, **kwargs)
        assert none is None
        torch.testing.assert_close(fast, dist, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("block_size", [3, 64, 2**24])
def test_leave_one_group_out_search(block_size):
    g = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(30, 8, generator=g), torch.randn(90, 8, generator=g)
    q_groups, b_groups = torch.arange(30) % 3, torch.arange(90) % 3
    dist, index = nearest_neighbours(queries, bank, block_size=block_size,
                                     query_groups=q_groups, bank_groups=b_groups)
    full = torch.cdist(queries, bank)
    full[q_groups[:, None] == b_groups[None, :]] = np.inf
    torch.testing.assert_close(dist[:, 0], full.min(dim=1).values, atol=1e-4, rtol=1e-5)
    assert (b_groups[index[:, 0]] != q_groups).all()


@pytest.mark.parametrize("n_queries, n_bank", [(8192, 3000), (8192, 100_000), (1, 10**8),
                                                (10**6, 1), (300, 2**24 + 1)])
def test_search_blocks_stay_within_the_memory_budget(n_queries, n_bank):
    rows, cols = _blocks(n_queries, n_bank, BLOCK_SIZE)
    assert 1 <= rows <= n_queries and 1 <= cols <= n_bank
    assert rows * cols <= BLOCK_SIZE
    assert rows * cols >= min(n_queries * n_bank, BLOCK_SIZE) // 2  # and use it


def test_search_validates_its_arguments():
    with pytest.raises(ValueError, match="k=4"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(3, 3), k=4)
    with pytest.raises(ValueError, match="both"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(3, 3), query_groups=torch.zeros(2))


def test_labelled_anomaly_mask_finds_the_planted_contaminant_patches():
    g = torch.Generator().manual_seed(3)
    # 10 normal "images" of 20 patches around 0; image 9 also has 5 defect patches near 8
    normal = torch.randn(10, 20, 4, generator=g)
    normal[9, :5] += 8.0
    anomalies = torch.randn(15, 4, generator=g) + 8.0  # labelled defects near 8
    reference = normal.reshape(-1, 4)
    groups = torch.arange(10).repeat_interleave(20)
    mask = labelled_anomaly_mask(reference, anomalies, reference, bank_groups=groups,
                                 reference_groups=groups)
    planted = torch.zeros(10, 20, dtype=torch.bool)
    planted[9, :5] = True
    assert torch.equal(mask, planted.reshape(-1))


@pytest.fixture(scope="module")
def embedding():
    extractor = create_feature_extractor("test_efficientnet", pretrained=False,
                                         out_indices=(2, 3))
    return PatchEmbedding(extractor)


def test_embedding_aligns_the_levels_at_the_finest_grid(embedding):
    x = torch.rand(2, 3, 32, 48)
    out = embedding(x)
    assert out.shape == (2, embedding.channels, 4, 6)
    assert embedding.channels == 32 + 48 and embedding.reduction == 8
    embedding.train()
    assert not embedding.extractor.training  # frozen BatchNorm statistics
    assert not any(p.requires_grad for p in embedding.parameters())


def test_module_scores_are_the_largest_patch_distance(embedding):
    module = PatchCoreModule(embedding).eval()
    with torch.no_grad():
        train = embedding(torch.rand(4, 3, 32, 32))
        module.set_memory_bank(train.permute(0, 2, 3, 1).reshape(-1, embedding.channels))
        scores, dist = module(torch.rand(3, 3, 32, 32))
        own_scores, own_dist = module.score_embedding(train)
    assert dist.shape == (3, 4, 4)
    torch.testing.assert_close(scores, dist.flatten(1).max(dim=1).values)
    assert float(own_dist.max()) < 1e-2 * float(dist.max())  # every own patch is in the bank


def test_density_reweighting_lies_between_its_bounds(embedding):
    plain, reweighted = PatchCoreModule(embedding), PatchCoreModule(embedding,
                                                                     reweight_neighbors=4)
    with torch.no_grad():
        bank = embedding(torch.rand(4, 3, 32, 32)).permute(0, 2, 3, 1).reshape(-1, 80)
        for m in (plain, reweighted):
            m.set_memory_bank(bank)
        x = torch.rand(5, 3, 32, 32)
        s, s_w = plain(x)[0], reweighted(x)[0]
    assert reweighted.bank_neighbours.shape == (len(bank), 4)
    assert torch.equal(reweighted.bank_neighbours[:, 0], torch.arange(len(bank)))
    assert (s_w <= s * (1 + 1e-6)).all() and (s_w >= s * (1 - 1 / 4) - 1e-6).all()


def test_empty_bank_raises(embedding):
    with pytest.raises(RuntimeError, match="set_memory_bank"):
        PatchCoreModule(embedding)(torch.rand(1, 3, 32, 32))
