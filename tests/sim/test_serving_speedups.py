"""The serving loop's shortcuts change nothing but the wall time: reused plans equal replanned
ones, routing does not depend on how stretches are cut, and the resolutions draw one law."""

import numpy as np
import pytest

from moesim.api import run
from moesim.sim import serving_groups, serving_plans
from moesim.sim.serving_routing import ServingRouting, alias_table, rank_sets
from moesim.workload import SyntheticRouter
from tests.conftest import SIMPLE_PROFILE, TINY_MODEL, make_scenario

# 16 experts, top 4: 1820 rank sets, so small steps draw token by token
WIDE_MODEL = {**TINY_MODEL, "layers": 2, "moe_every": 1, "num_experts": 16, "top_k": 4}


def _serving(
    scheduler: dict, *, seed: int = 5, count: int = 40, routing=None, model=None, rate=3e5
):
    requests = {
        "count": count,
        "arrival": {"process": "poisson", "rate": rate},
        "prompt_tokens": {"distribution": "uniform", "low": 8, "high": 90},
        "output_tokens": {"distribution": "uniform", "low": 1, "high": 30},
    }
    return make_scenario(
        seed=seed,
        model=model or dict(TINY_MODEL),
        cluster={"nodes": 1, "gpus_per_node": 2, "device": SIMPLE_PROFILE},
        workload={
            "phase": "serving",
            "requests": requests,
            "routing": routing or {"source": "synthetic", "distribution": "zipf", "skew": 1.0},
        },
        policies={"gating": {"name": "dynamic"}, "scheduler": scheduler},
    )


SCHEDULERS = [
    {"name": "continuous", "max_sequences": 6, "max_batch_tokens": 256, "block_tokens": 4},
    {"name": "chunked", "max_sequences": 6, "max_batch_tokens": 48, "chunk_tokens": 16},
    {"name": "static", "batch_size": 3, "timeout_s": 1e-5},
]


def _timeline(records) -> tuple:
    requests = records.serving.requests
    return (
        records.steps.latency_s.tolist(),
        records.steps.start_s.tolist(),
        requests.first_token_s.tolist(),
        requests.finish_s.tolist(),
        requests.preemptions.tolist(),
        records.serving.running.tolist(),
        records.serving.kv_blocks.tolist(),
    )


def _replan_always(monkeypatch) -> None:
    """Make the planner forget every plan after each stretch: the scheduler plans each anew."""

    def forget(self, steps: int) -> None:
        self._plans = [None] * len(self._plans)

    monkeypatch.setattr(serving_plans.Planner, "ran", forget)


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s["name"])
def test_reused_plans_give_the_run_that_replanning_every_stretch_gives(
    scheduler, monkeypatch
) -> None:
    scenario = _serving(scheduler)
    reused = _timeline(run(scenario)[1])
    _replan_always(monkeypatch)
    assert _timeline(run(scenario)[1]) == reused


def test_a_kv_cache_that_runs_out_preempts_alike_with_reused_plans(monkeypatch) -> None:
    # 14 blocks of 16 tokens per GPU: decodes cross into blocks the cache lacks, and preempt
    full_cache = serving_groups.kv_cache

    def small_cache(scenario, plan, requests):
        full = full_cache(scenario, plan, requests)
        blocks_A = np.full_like(full.blocks_A, 14)
        return serving_groups.KVCache(full.weights_G, blocks_A, full.activation_G)

    monkeypatch.setattr("moesim.sim.serving_pool.kv_cache", small_cache)
    scheduler = {"name": "continuous", "max_sequences": 8, "max_batch_tokens": 256}
    scenario = _serving(scheduler, count=24)
    reused = run(scenario)[1]
    assert reused.serving.requests.preemptions.sum() > 0
    _replan_always(monkeypatch)
    assert _timeline(run(scenario)[1]) == _timeline(reused)


def test_a_static_batch_starts_at_its_timeout_while_every_group_waits() -> None:
    # 6 requests at 100/s, batches of 4: every batch starts by the timeout, not the next arrival
    scheduler = {"name": "static", "batch_size": 4, "timeout_s": 0.001}
    result, _ = run(_serving(scheduler, count=6, rate=100.0))
    assert result.serving.completed == 6
    assert result.serving.queue_s.p99 == pytest.approx(0.001, rel=1e-3)


def test_a_serving_run_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    scheduler = SCHEDULERS[0]
    first, again = run(_serving(scheduler))[1], run(_serving(scheduler))[1]
    assert _timeline(first) == _timeline(again)
    other = run(_serving(scheduler, seed=6))[1]
    assert other.steps.latency_s.tolist() != first.steps.latency_s.tolist()


@pytest.mark.parametrize("model", [TINY_MODEL, WIDE_MODEL], ids=["sets", "tokens"])
def test_routing_does_not_depend_on_how_a_stretch_is_cut(model) -> None:
    scenario = _serving(SCHEDULERS[0], model=dict(model))
    layers = scenario.model.moe_layers(scenario.stack())
    tokens_G = np.array([300, 5])
    whole = ServingRouting(scenario, layers).draw(tokens_G, 7)
    cut = ServingRouting(scenario, layers)
    parts = [cut.draw(tokens_G, 2), cut.draw(tokens_G, 5, ahead=2)]
    assert np.array_equal(np.concatenate(parts), whole)
    cut.commit(3, tokens_G)  # steps 3.. drawn again are the same steps
    assert np.array_equal(cut.draw(tokens_G, 4), whole[3:])
    # each token picks top_k distinct experts: every (step, layer, GPU) holds its tokens x K
    assert np.all(whole.sum(axis=-1) == tokens_G * scenario.model.top_k)
    assert np.all(whole <= tokens_G[:, None])


def test_rank_sets_carry_the_token_level_chance_of_each_set() -> None:
    scenario = _serving(SCHEDULERS[0], model={**TINY_MODEL, "num_experts": 6, "top_k": 3})
    routing, model = scenario.workload.routing, scenario.model
    router = SyntheticRouter(routing, model.num_experts, model.top_k, 1, np.random.default_rng(1))
    sets_JE, p_J = rank_sets(router)
    assert sets_JE.shape == (20, 6) and np.all(sets_JE.sum(axis=1) == 3)
    draws = 200_000
    ranks_KR = router.ranks(draws)
    picked_RE = np.zeros((draws, 6), dtype=np.int64)
    np.put_along_axis(picked_RE, ranks_KR.T.astype(np.int64), 1, axis=1)
    index = {tuple(row): j for j, row in enumerate(sets_JE.tolist())}
    seen_J = np.bincount([index[tuple(row)] for row in picked_RE.tolist()], minlength=20)
    sigma = np.sqrt(draws * p_J * (1 - p_J))
    assert np.all(np.abs(seen_J - draws * p_J) < 5 * sigma)


def test_count_level_and_token_level_serving_agree_within_sampling_noise() -> None:
    # a serving run whose every step is drawn at one resolution, then the other
    results = {}
    for resolution in ("tokens", "counts"):
        routing = {"source": "synthetic", "distribution": "zipf", "skew": 1.0}
        routing["resolution"] = resolution
        scenario = _serving(SCHEDULERS[0], count=300, routing=routing, model=dict(WIDE_MODEL))
        results[resolution], records = run(scenario)
        assert records.routing_resolution == resolution
    tokens, counts = results["tokens"], results["counts"]
    assert counts.serving.completed == tokens.serving.completed == 300
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        a, b = getattr(tokens.serving, metric).mean, getattr(counts.serving, metric).mean
        assert b == pytest.approx(a, rel=0.05), metric
    assert counts.serving.output_tokens_per_s == pytest.approx(
        tokens.serving.output_tokens_per_s, rel=0.05
    )
    # the routing-sensitive figure: how far the busiest GPU is above the mean
    assert counts.load_imbalance == pytest.approx(tokens.load_imbalance, rel=0.02)


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ({"num_experts": 6, "top_k": 3}, 4),  # rank sets, a row each
        ({"num_experts": 6, "top_k": 3}, 400),  # rank sets, a multinomial per GPU
        ({"num_experts": 16, "top_k": 4}, 20),  # ranks, a row each
    ],
    ids=["set-rows", "set-multinomials", "rank-rows"],
)
def test_serving_routing_draws_the_token_level_law(model, tokens) -> None:
    # per (step, layer), each popularity rank's tokens: Binomial(tokens, p_r), p_r the chance
    # that a token of the token-level router picks rank r among its K
    scenario = _serving(SCHEDULERS[0], model={**WIDE_MODEL, **model})
    layers, experts, top_k = 2, model["num_experts"], model["top_k"]
    steps = 20_000 if tokens < 100 else 600
    routing = ServingRouting(scenario, layers)
    counts_NLE = routing.draw(np.array([tokens, 0]), steps)[:, :, 0]
    ranking_XE, row_NL = routing._rankings(0, steps)
    ranks_X = np.take_along_axis(counts_NLE, ranking_XE[row_NL].astype(np.int64), axis=-1)
    ranks_X = ranks_X.reshape(-1, experts)
    router = SyntheticRouter(
        scenario.workload.routing, experts, top_k, layers, np.random.default_rng(9)
    )
    drawn_KR = router.ranks(2_000_000)
    p_E = np.bincount(drawn_KR.ravel(), minlength=experts) / drawn_KR.shape[1]
    spread_E = np.sqrt(tokens * p_E * (1 - p_E))
    error_E = spread_E / np.sqrt(ranks_X.shape[0]) + tokens * np.sqrt(p_E / drawn_KR.shape[1])
    assert np.all(np.abs(ranks_X.mean(axis=0) - tokens * p_E) < 5 * error_E)
    assert ranks_X.std(axis=0) == pytest.approx(spread_E, rel=0.1)


@pytest.mark.parametrize("size", [1, 2, 7, 28, 256])
def test_the_alias_table_gives_each_choice_its_chance_exactly(size) -> None:
    p_J = np.random.default_rng(size).random(size) ** 3
    p_J /= p_J.sum()
    keep_J, alias_J = alias_table(p_J)
    implied_J = keep_J / size
    np.add.at(implied_J, alias_J, (1 - keep_J) / size)
    assert implied_J == pytest.approx(p_J, abs=1e-15)
