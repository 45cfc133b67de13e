"""Two gloo ranks run one MoE layer; every token's output equals a dense computation of the
layer, with replicas, unequal capacities, drops, einsum and index dispatch, and one slot."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moesim.policies import CacheCounters, ExpertCache, StaticGating
from moesim.policies.cache import LeastRecentlyUsed
from moesim.reference.blocks import FfnWeights, ffn
from moesim.reference.comm import Comm
from moesim.reference.experts import ExpertStore
from moesim.reference.moe import LayerRoute, MoeLayer
from moesim.reference.timer import PhaseTimer
from tests.conftest import TINY_MODEL, make_scenario

TOKENS_G = np.array([8, 7])  # unequal: unequal static capacities
EXPERTS, TOP_K, D, F = 4, 2, 16, 32
UNIT_EXPERT = np.array([0, 1, 2, 3, 0, 1])  # 6 units: replicas of experts 0 and 1
OWNER = np.array([0, 0, 0, 1, 1, 1])
MODES = ("dynamic", "static-einsum", "static-index", "dynamic-buffered", "static-einsum-buffered")


def _case():
    gen = torch.Generator().manual_seed(0)
    model = make_scenario(model={**TINY_MODEL, "d_model": D, "d_ffn": F}).model
    experts = FfnWeights.random(model, F, (EXPERTS,), gen, torch.float64, "cpu")
    gate = torch.randn((D, EXPERTS), generator=gen, dtype=torch.float64)
    x = torch.randn((int(TOKENS_G.sum()), D), generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(1)
    ids = np.stack([rng.choice(EXPERTS, TOP_K, replace=False, p=[0.7, 0.1, 0.1, 0.1]) for _ in x])
    odd = (np.arange(len(x)) % 2 == 1)[:, None]  # odd tokens use the replicas of 0 and 1
    units = ids + 4 * (np.isin(ids, (0, 1)) & odd)
    return model, experts, gate, x, ids, units


def _dense(x, gate, experts, ids, kept):
    probs = torch.softmax(x @ gate, dim=-1)
    y = x.clone()
    for t, k in zip(*np.nonzero(kept), strict=True):
        e = int(ids[t, k])
        y[t] += probs[t, e] * ffn(x[t : t + 1], experts.select(e))[0]
    return y


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    _, experts, gate, x, ids, units = _case()
    offsets = np.concatenate([[0], np.cumsum(TOKENS_G)])
    mine = slice(offsets[rank], offsets[rank + 1])
    source = np.repeat(np.arange(2), TOKENS_G)
    local = np.flatnonzero(rank == OWNER)
    weights = FfnWeights(experts.w_in[UNIT_EXPERT[local]], experts.w_out[UNIT_EXPERT[local]])
    errors = {}
    for mode in MODES:
        capacity, kept = None, np.ones_like(ids, dtype=bool)
        if mode.startswith("static"):
            policy = StaticGating(StaticGating.Params(capacity_factor=1.2, min_capacity=0))
            kept = policy.kept(units[None, None], source, 2, len(OWNER))[0, 0]
            capacity = policy.capacity(TOKENS_G, len(OWNER), TOP_K)
        store = ExpertStore(local, resident=weights)
        if mode.endswith("buffered"):
            slots = FfnWeights(
                *(
                    torch.empty((1, D, F), dtype=torch.float64),
                    torch.empty((1, F, D), dtype=torch.float64),
                )
            )
            cache = ExpertCache(1, LeastRecentlyUsed(LeastRecentlyUsed.Params()))
            store = ExpertStore(local, host=weights, slots=slots, cache=cache)
        layer = MoeLayer(
            gate=gate,
            owner_U=OWNER,
            store=store,
            capacity_G=capacity,
            einsum="einsum" in mode,
            gpus=2,
        )
        route = LayerRoute(
            torch.as_tensor(units[mine]),
            torch.as_tensor(ids[mine]),
            None if capacity is None else torch.as_tensor(kept[mine]),
        )
        y, account = layer(
            x[mine], route, Comm(rank, 2), PhaseTimer(torch.device("cpu")), CacheCounters()
        )
        expected = _dense(x, gate, experts, ids, kept)[mine]
        errors[mode] = {
            "error": float((y - expected).abs().max()),
            "kept": int(kept[mine].sum()),
            "processed": account.processed,
            "dropped": int((~kept).sum()),
        }
    Path(folder, f"rank{rank}.json").write_text(json.dumps(errors))
    dist.destroy_process_group()


def test_two_ranks_compute_the_dense_layer_for_every_kept_token():
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(folder,), nprocs=2)
        ranks = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in (0, 1)]
    for mode in MODES:
        for rank in ranks:
            assert rank[mode]["error"] < 1e-6, mode  # the router computes in fp32
            assert rank[mode]["processed"] == rank[mode]["kept"], mode
    assert ranks[0]["static-index"]["dropped"] > 0  # the static case really drops tokens
