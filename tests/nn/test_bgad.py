"""BGAD's modules: per-level flows, standardisation, likelihood maps, anomaly map and score."""

import math

import pytest
import torch

from skad.nn.anomaly_map import upsample_maps
from skad.nn.backbones import create_feature_extractor
from skad.nn.bgad import BGADFlows, BGADModule, level_conditions
from skad.nn.flows import positional_encoding
from skad.nn.frozen import FrozenLevels


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _module(**kw):
    torch.manual_seed(0)
    extractor = create_feature_extractor("test_efficientnet", pretrained=False,
                                         out_indices=(1, 2, 3))
    levels = FrozenLevels(extractor)
    flows = BGADFlows(levels.channels, cond_dim=8, n_blocks=2,
                      generator=torch.Generator().manual_seed(0))
    return BGADModule(levels, flows, **kw).eval()


def test_level_conditions_are_the_positional_encoding_row_major():
    cond = level_conditions(3, 5, 8)
    pe = positional_encoding(3, 5, 8)
    assert cond.shape == (15, 8)
    torch.testing.assert_close(cond[5 * 2 + 4], pe[:, 2, 4])


def test_flows_take_any_leading_shape():
    flows = BGADFlows([3, 5], cond_dim=4, n_blocks=2, generator=torch.Generator().manual_seed(1))
    x = [torch.randn(2, 7, 3), torch.randn(2, 7, 5)]
    c = [torch.randn(2, 7, 4), torch.randn(2, 7, 4)]
    out = flows(list(zip(x, c)))
    assert [o.shape for o in out] == [(2, 7), (2, 7)]
    flat = flows.flows[0].log_likelihood(x[0].reshape(-1, 3), c[0].reshape(-1, 4))
    torch.testing.assert_close(out[0].reshape(-1), flat)


def test_standardisation_per_position_or_channel():
    flows = BGADFlows([3], cond_dim=4, n_blocks=1)
    maps = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(flows.standardize(0, maps), maps)  # identity until fitted
    loc = torch.randn(3, 4, 5)
    scale = torch.rand(3, 1, 1) + 0.5
    flows.set_standardization([loc], [scale])
    torch.testing.assert_close(flows.standardize(0, maps * scale + loc), maps)
    # the maps are standardised before scoring: a shifted-and-scaled copy scores alike
    flows.set_standardization([torch.zeros(3, 1, 1)], [torch.ones(3, 1, 1)])
    plain = flows.log_likelihood_maps([maps])[0]
    flows.set_standardization([loc], [scale])
    torch.testing.assert_close(flows.log_likelihood_maps([maps * scale + loc])[0], plain,
                               rtol=1e-5, atol=1e-5)


def test_likelihood_maps_score_every_position_with_its_encoding():
    module = _module()
    levels = module.embed(torch.rand(2, 3, 32, 32))
    maps = module.flows.log_likelihood_maps(levels, chunk=7)  # chunks change nothing
    assert [m.shape for m in maps] == [f.shape[:1] + f.shape[2:] for f in levels]
    f = levels[1]
    h, w = f.shape[-2:]
    x = f[1, :, 1, 0][None]
    cond = level_conditions(h, w, 8)[1 * w + 0][None]
    torch.testing.assert_close(maps[1][1, 1, 0], module.flows.flows[1].log_likelihood(x, cond)[0])


def test_anomaly_map_is_levels_minus_shifted_likelihoods():
    module = _module()
    module.set_shift([0.5, -1.0, 2.0])
    ll = [torch.full((1, 4, 4), 0.5), torch.full((1, 2, 2), -1.0), torch.full((1, 1, 1), 1.0)]
    anomaly = module.anomaly_map(ll)
    expected = 3 - (1 + 1 + math.exp(-1.0))
    torch.testing.assert_close(anomaly, torch.full((1, 4, 4), expected))


def test_score_is_the_max_or_top_share_of_the_smoothed_map():
    maps = torch.zeros(2, 8, 8)
    maps[1, 3, 3] = 1.0
    module = _module(sigma=0.0)
    scores = module.score_map(maps)  # no smoothing: the max of the map at input size
    size = (8 * module.embedding.reductions[0],) * 2
    torch.testing.assert_close(scores, upsample_maps(maps, size).flatten(1).amax(1))
    assert scores[0] == 0 and 0.5 < scores[1] <= 1
    smooth = _module(sigma=4.0).score_map(maps)
    assert 0 < smooth[1] < 1  # smoothing spreads the peak
    top = _module(sigma=0.0, top_k=0.5).score_map(maps)
    assert top[1] < scores[1]


def test_module_scores_are_batch_independent():
    module = _module()
    x = torch.rand(3, 3, 32, 32)
    together = module(x)
    alone = module(x[1:2])
    torch.testing.assert_close(alone.score, together.score[1:2], rtol=1e-5, atol=1e-6)
    assert together.distances.shape == (3, 8, 8)  # the finest level: stride 4 at 32 px


def test_log_likelihood_map_is_the_negative_joint_log_likelihood():
    module = _module(map="log_likelihood")
    module.set_shift([0.5, -1.0, 2.0])
    ll = [torch.full((1, 4, 4), 0.0), torch.full((1, 2, 2), -1.0), torch.full((1, 1, 1), 1.0)]
    torch.testing.assert_close(module.anomaly_map(ll), torch.full((1, 4, 4), 0.5 + 0.0 + 1.0))
    with pytest.raises(ValueError, match="map must be"):
        _module(map="nll")
