"""Count-level routing is the token-level law: exact means, the same spread, one accounting.

Expectations are computed here from the Plackett-Luce law by enumeration, never from the code
under test; token-level runs of the same scenario are the reference for the spread.
"""

from itertools import permutations

import numpy as np
import pytest

from moesim.api import run
from moesim.config import GATING, SyntheticRouting
from moesim.hardware import build_topology
from moesim.policies import contiguous_plan
from moesim.policies.placement import PlacementPlan
from moesim.sim.traffic import counted_tokens, routed_tokens
from moesim.workload import SyntheticRouter, routing_chunks, tokens_per_gpu, zipf_weights
from moesim.workload.counts import CountRouter, choice_law
from tests.conftest import TINY_MODEL, make_scenario


def _inclusion(weights: np.ndarray, top_k: int) -> np.ndarray:
    """P(rank r among a token's top-k) under Plackett-Luce, by enumerating ordered picks."""
    experts = weights.size
    chance = np.zeros(experts)
    for picks in permutations(range(experts), top_k):
        p, left = 1.0, 1.0
        for e in picks:
            p *= weights[e] / left
            left -= weights[e]
        chance[list(picks)] += p
    return chance


def _count_router(skew, top_k, experts, tokens_G, locality=0.0, seed=0):
    spec = SyntheticRouting(
        source="synthetic",
        distribution="zipf" if skew else "uniform",
        skew=skew,
        locality=locality,
    )

    def make(s: int) -> SyntheticRouter:
        return SyntheticRouter(spec, experts, top_k, 2, np.random.default_rng(s))

    law = choice_law(make(seed + 100))
    return CountRouter(make(seed), np.asarray(tokens_G), law)


@pytest.mark.parametrize(("skew", "top_k"), [(0.0, 2), (1.0, 2), (1.5, 3), (1.0, 1)])
def test_per_rank_mean_load_is_the_plackett_luce_inclusion_chance(skew, top_k) -> None:
    experts, tokens_G, steps = 8, [300, 300, 299], 400
    router = _count_router(skew, top_k, experts, tokens_G, locality=1.0)
    counts_NLGE = router.draw(steps)
    # locality 1: one ranking for the whole run, so each expert keeps its rank
    ranking_LE = router.router._ranking_LE
    by_rank = np.take_along_axis(counts_NLGE, ranking_LE[None, :, None, :], axis=-1)
    weights = router.router.rank_weights_LE[0]
    expected_GE = np.outer(tokens_G, _inclusion(weights, top_k))
    mean_GE = by_rank.mean(axis=(0, 1))
    spread_GE = np.sqrt(
        expected_GE * (1 - expected_GE / np.asarray(tokens_G)[:, None]) / (2 * steps)
    )
    assert np.abs(mean_GE - expected_GE).max() < 0.01 * expected_GE.max() + 5 * spread_GE.max()
    # every token makes exactly top_k distinct choices
    assert (counts_NLGE.sum(axis=-1) == np.asarray(tokens_G) * top_k).all()
    assert (counts_NLGE <= np.asarray(tokens_G)[:, None]).all()


def test_uniform_counts_spread_like_a_binomial_per_expert() -> None:
    # Each of S tokens includes a given expert with chance K/E, independently: Binomial(S, K/E).
    experts, top_k, tokens = 16, 2, 512
    counts = _count_router(0.0, top_k, experts, [tokens]).draw(2000)[:, :, 0].ravel()
    p = top_k / experts
    assert counts.mean() == pytest.approx(tokens * p, rel=0.005)
    assert counts.var() == pytest.approx(tokens * p * (1 - p), rel=0.05)


def _scenario(resolution, gating, skew, locality, distribution="zipf", seed=5, steps=300):
    model = dict(TINY_MODEL, num_experts=16, top_k=2, layers=4, moe_every=1, d_model=16)
    routing = {
        "source": "synthetic",
        "distribution": distribution,
        "skew": skew,
        "locality": locality,
        "resolution": resolution,
    }
    workload = {
        "phase": "prefill",
        "batch_size": 8,
        "seq_len": 64,
        "steps": steps,
        "routing": routing,
    }
    cluster = {"nodes": 2, "gpus_per_node": 2, "device": make_scenario().cluster.device}
    return make_scenario(
        model=model, cluster=cluster, workload=workload, seed=seed, policies={"gating": gating}
    )


@pytest.mark.parametrize(
    ("distribution", "skew", "locality"),
    [("uniform", 0.0, 0.0), ("zipf", 1.0, 0.0), ("zipf", 1.0, 0.8), ("zipf", 2.0, 0.5)],
)
def test_both_resolutions_agree_on_spread_and_drops(distribution, skew, locality) -> None:
    gating = {"name": "static", "capacity_factor": 1.0, "min_capacity": 0}
    results = {
        r: run(_scenario(r, gating, skew, locality, distribution))[0] for r in ("tokens", "counts")
    }
    tokens, counts = results["tokens"], results["counts"]
    assert counts.tokens.routed == tokens.tokens.routed
    assert counts.tokens.routed == counts.tokens.processed + counts.tokens.dropped
    # over 300 steps x 4 layers, sampling noise on these means is well under 2 %
    assert counts.placement.avg_max_load == pytest.approx(tokens.placement.avg_max_load, rel=0.02)
    assert counts.load_imbalance == pytest.approx(tokens.load_imbalance, rel=0.02)
    assert counts.tokens.dropped == pytest.approx(tokens.tokens.dropped, rel=0.03)


def test_dynamic_gating_traffic_agrees_across_resolutions() -> None:
    gating = {"name": "dynamic"}
    results = [run(_scenario(r, gating, 1.0, 0.5))[0] for r in ("tokens", "counts")]
    for kind in ("nvlink", "network"):
        a, b = (r.alltoall_bytes_by_kind[kind] for r in results)
        assert b == pytest.approx(a, rel=0.02)
    assert results[1].throughput_tokens_per_s == pytest.approx(
        results[0].throughput_tokens_per_s, rel=0.02
    )


@pytest.mark.parametrize("resolution", ["tokens", "counts"])
def test_each_resolution_is_deterministic_per_seed(resolution) -> None:
    gating = {"name": "dynamic"}
    a = run(_scenario(resolution, gating, 1.0, 0.5, steps=20))[0]
    b = run(_scenario(resolution, gating, 1.0, 0.5, steps=20))[0]
    c = run(_scenario(resolution, gating, 1.0, 0.5, seed=6, steps=20))[0]
    assert a.per_step == b.per_step
    assert a.per_step != c.per_step


def test_a_window_of_counts_is_the_same_steps_whatever_the_start() -> None:
    scenario = _scenario("counts", {"name": "dynamic"}, 1.0, 0.5, steps=150)
    whole = np.concatenate([c.counts_NLGE for c in routing_chunks(scenario)])
    window = np.concatenate([c.counts_NLGE for c in routing_chunks(scenario, 70, 50)])
    assert np.array_equal(window, whole[70:120])


def _counts_from_tokens(units_NLTK, source_T, gpus, units):
    n, layers = units_NLTK.shape[:2]
    step_layer = np.arange(n * layers).reshape(n, layers, 1, 1) * gpus
    keys = ((step_layer + source_T[None, None, :, None]) * units + units_NLTK).ravel()
    return np.bincount(keys, minlength=n * layers * gpus * units).reshape(n, layers, gpus, units)


@pytest.mark.parametrize(
    "gating", [{"name": "dynamic"}, {"name": "static", "capacity_factor": 0.5}]
)
def test_gating_and_traffic_from_counts_equal_those_from_tokens(gating) -> None:
    scenario = _scenario("tokens", gating, 1.0, 0.0, steps=3)
    gpus, experts = scenario.cluster.gpus, scenario.model.num_experts
    tokens_G = tokens_per_gpu(scenario.workload.tokens_per_step, gpus)
    source_T = np.repeat(np.arange(gpus), tokens_G)
    ids = next(iter(routing_chunks(scenario))).expert_ids_NLTK
    counts = _counts_from_tokens(ids, source_T, gpus, experts)
    policy = GATING.build(scenario.policies.gating)
    by_tokens = policy.gate(ids, source_T, gpus, experts)
    by_counts = policy.gate_counts(counts, tokens_G, scenario.model.top_k)
    assert np.array_equal(by_tokens.tokens_NLE, by_counts.tokens_NLE)
    assert np.array_equal(by_tokens.slots_NLE, by_counts.slots_NLE)
    # a placement that is not blocked, so per-GPU sums take the general path
    owner = np.tile(np.arange(experts) % gpus, (ids.shape[1], 1))
    plan = PlacementPlan(np.tile(np.arange(experts), (ids.shape[1], 1)), owner, gpus, experts)
    topology = build_topology(scenario.cluster)
    for a, b in zip(
        routed_tokens(ids, source_T, plan.per_gpu_sum(counts.sum(axis=2)), plan, topology),
        counted_tokens(counts, plan, topology),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_replicas_split_an_experts_tokens_evenly_and_keep_the_total() -> None:
    # expert 0 has three copies (slots 0, 2, 3), expert 1 one (slot 1)
    plan = PlacementPlan(np.array([[0, 1, 0, 0]]), np.array([[0, 0, 1, 1]]), 2, 2)
    counts_NLGE = np.zeros((4000, 1, 2, 2), dtype=np.int64)
    counts_NLGE[..., 0], counts_NLGE[..., 1] = 30, 7
    units = plan.to_unit_counts(counts_NLGE, np.random.default_rng(0))
    assert (units[..., [0, 2, 3]].sum(axis=-1) == 30).all()
    assert (units[..., 1] == 7).all()
    # each copy takes a token with chance 1/3: Binomial(30, 1/3) per copy
    assert units[..., [0, 2, 3]].mean(axis=(0, 1, 2)) == pytest.approx([10, 10, 10], rel=0.01)
    assert units[..., 0].var() == pytest.approx(30 * (1 / 3) * (2 / 3), rel=0.06)


def test_auto_takes_counts_only_for_large_steps() -> None:
    small = _scenario("auto", {"name": "dynamic"}, 1.0, 0.0)
    assert small.routing_resolution() == "tokens"
    big = make_scenario(
        model=dict(TINY_MODEL, num_experts=8, top_k=2, layers=2, moe_every=1),
        workload={"phase": "prefill", "batch_size": 64, "seq_len": 512, "steps": 1},
    )
    assert big.routing_resolution() == "counts"  # 32768 tokens x 2 against 2 GPUs x 8 experts
    result = run(big)[0]
    assert result.routing_resolution == "counts"
    assert result.tokens.routed == 32768 * 2 * 2  # tokens x top-k x MoE layers
    assert run(small)[0].routing_resolution == "tokens"


def test_zipf_weights_enumeration_matches_closed_form_for_top_1() -> None:
    weights = zipf_weights(8, 1.0)
    assert _inclusion(weights, 1) == pytest.approx(weights)
    assert _inclusion(weights, 2).sum() == pytest.approx(2.0)


def test_contiguous_plan_is_identity_for_counts() -> None:
    counts = np.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4)
    assert contiguous_plan(4, 2, 3).to_unit_counts(counts, np.random.default_rng(0)) is counts


@pytest.mark.parametrize(
    "policies",
    [
        {"placement": {"name": "greedy", "history_steps": 10}},
        {
            "placement": {"name": "replicated", "history_steps": 10, "redundant_experts": 4},
            "gating": {"name": "static", "capacity_factor": 1.25},
        },
        {"cache": {"name": "lru", "slots_per_layer": 3}},
        {"cache": {"name": "belady", "slots_per_layer": 3}},
    ],
)
def test_every_policy_family_runs_on_counts_and_agrees_with_tokens(policies) -> None:
    results = {}
    for resolution in ("tokens", "counts"):
        scenario = _scenario(resolution, {"name": "dynamic"}, 1.0, 0.5, steps=150)
        data = scenario.model_dump()
        data["policies"] = {"gating": {"name": "dynamic"}, **policies}
        results[resolution] = run(type(scenario).model_validate(data))[0]
    tokens, counts = results["tokens"], results["counts"]
    assert counts.tokens.routed == counts.tokens.processed + counts.tokens.dropped
    assert counts.throughput_tokens_per_s == pytest.approx(tokens.throughput_tokens_per_s, rel=0.03)
    assert counts.load_imbalance == pytest.approx(tokens.load_imbalance, rel=0.03)
    if tokens.cache is not None:
        assert counts.cache.hit_rate == pytest.approx(tokens.cache.hit_rate, abs=0.03)


def test_validation_simulates_at_token_level_as_the_reference_replays() -> None:
    from moesim.validate.runner import token_level

    scenario = _scenario("counts", {"name": "dynamic"}, 1.0, 0.5, steps=4)
    replayed = token_level(scenario)
    assert scenario.routing_resolution() == "counts"
    assert replayed.routing_resolution() == "tokens"
    assert replayed.workload.routing.skew == scenario.workload.routing.skew
    same = token_level(replayed)
    assert same is replayed
