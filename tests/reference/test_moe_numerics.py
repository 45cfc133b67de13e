"""The reference MoE layer against a dense computation of the same layer, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moesim.policies import CacheCounters, ExpertCache, StaticGating
from moesim.policies.cache import LeastRecentlyUsed
from moesim.reference.blocks import FfnWeights, ffn
from moesim.reference.comm import Comm
from moesim.reference.experts import ExpertStore
from moesim.reference.moe import LayerRoute, MoeLayer
from moesim.reference.timer import PhaseTimer
from tests.conftest import TINY_MODEL, make_scenario

TOKENS, D, F, E, K = 24, 16, 32, 4, 2


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(0)
    model = make_scenario(model={**TINY_MODEL, "d_model": D, "d_ffn": F}).model
    experts = FfnWeights.random(model, F, (E,), gen, torch.float64, "cpu")
    gate = torch.randn((D, E), generator=gen, dtype=torch.float64)
    x = torch.randn((TOKENS, D), generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(1)
    # distinct top-2 per token, skewed towards expert 0 so that static gating drops some
    ids = np.stack(
        [rng.choice(E, size=K, replace=False, p=[0.55, 0.15, 0.15, 0.15]) for _ in range(TOKENS)]
    )
    return experts, gate, x, ids


def _dense(x, gate, experts, ids, kept):
    """y[t] = x[t] + sum_k kept[t,k] * softmax(x W_g)[t, e_tk] * FFN_e_tk(x[t])."""
    probs = torch.softmax(x @ gate, dim=-1)
    y = x.clone()
    for t in range(TOKENS):
        for k in range(K):
            if kept[t, k]:
                e = int(ids[t, k])
                y[t] += probs[t, e] * ffn(x[t : t + 1], experts.select(e))[0]
    return y


def _layer(experts, gate, capacity, einsum=True):
    store = ExpertStore(np.arange(E), resident=experts)
    return MoeLayer(
        gate=gate,
        owner_U=np.zeros(E, dtype=np.int64),
        store=store,
        capacity_G=capacity,
        einsum=einsum,
    )


def _route(ids, kept=None):
    index = torch.as_tensor(ids, dtype=torch.int64)
    return LayerRoute(index, index, None if kept is None else torch.as_tensor(kept))


def _forward(layer, x, route):
    timer = PhaseTimer(torch.device("cpu"))
    return layer(x, route, Comm(0, 1), timer, CacheCounters())


def test_dynamic_layer_equals_the_dense_computation(case):
    experts, gate, x, ids = case
    y, account = _forward(_layer(experts, gate, None), x, _route(ids))
    torch.testing.assert_close(y, _dense(x, gate, experts, ids, np.ones_like(ids, bool)))
    assert account.processed == TOKENS * K and account.padded == 0
    assert account.received == TOKENS * K


@pytest.mark.parametrize("einsum", [True, False])
def test_static_layer_keeps_the_policys_tokens_and_computes_them_exactly(case, einsum):
    experts, gate, x, ids = case
    policy = StaticGating(StaticGating.Params(capacity_factor=1.0, min_capacity=0))
    source = np.zeros(TOKENS, dtype=np.int64)
    kept = policy.kept(ids[None, None], source, 1, E)[0, 0]
    capacity = policy.capacity(np.array([TOKENS]), E, K)
    assert 0 < kept.sum() < TOKENS * K  # some assignments are dropped
    y, account = _forward(_layer(experts, gate, capacity, einsum), x, _route(ids, kept))
    torch.testing.assert_close(y, _dense(x, gate, experts, ids, kept))
    assert account.processed == kept.sum()
    assert account.padded == E * capacity[0] - kept.sum()
    assert account.received == kept.sum()  # padding rows are not counted as tokens


def test_static_and_dynamic_agree_on_the_tokens_static_keeps(case):
    """A token none of whose choices is dropped gets the same output under both policies."""
    experts, gate, x, ids = case
    policy = StaticGating(StaticGating.Params(capacity_factor=1.0, min_capacity=0))
    kept = policy.kept(ids[None, None], np.zeros(TOKENS, dtype=np.int64), 1, E)[0, 0]
    capacity = policy.capacity(np.array([TOKENS]), E, K)
    static, _ = _forward(_layer(experts, gate, capacity), x, _route(ids, kept))
    dynamic, _ = _forward(_layer(experts, gate, None), x, _route(ids))
    whole = kept.all(axis=1)
    assert whole.any() and not whole.all()
    torch.testing.assert_close(static[whole], dynamic[whole])
    assert not torch.allclose(static[~whole], dynamic[~whole])


def test_buffered_experts_compute_the_same_outputs_through_one_slot(case):
    experts, gate, x, ids = case
    slots = FfnWeights(
        *(torch.empty((1, *t.shape[1:]), dtype=t.dtype) for t in (experts.w_in, experts.w_out))
    )
    cache = ExpertCache(1, LeastRecentlyUsed(LeastRecentlyUsed.Params()))
    store = ExpertStore(np.arange(E), host=experts, slots=slots, cache=cache)
    layer = MoeLayer(
        gate=gate, owner_U=np.zeros(E, dtype=np.int64), store=store, capacity_G=None, einsum=False
    )
    counters = CacheCounters()
    y, _ = layer(x, _route(ids), Comm(0, 1), PhaseTimer(torch.device("cpu")), counters)
    torch.testing.assert_close(y, _dense(x, gate, experts, ids, np.ones_like(ids, bool)))
    used = np.unique(ids).size
    assert (counters.misses, counters.hits, counters.copies) == (used, 0, used)
    assert counters.evictions == used - 1
