"""The serving reference executor: real KV attention, request timestamps from the measured
steps, conservation, one and two ranks, replays, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moesim.metrics import Result
from moesim.policies import StepPlan
from moesim.reference import UnsupportedScenarioError, replay_steps, serve
from moesim.reference.blocks import AttentionBlock
from moesim.reference.serving_kv import KVStore, Segments, StepIndex, serving_attention
from moesim.workload import request_table
from tests.conftest import SIMPLE_PROFILE, SMALL_MOE, make_scenario

PROFILE = {**SIMPLE_PROFILE, "memory": {**SIMPLE_PROFILE["memory"], "capacity": "64GB"}}
BLOCKS = 1 << 20  # KV blocks per group: far more than these requests hold
MOE_LAYERS = 2


def _serving(gpus=1, count=6, arrival=None, prompt=None, output=None, scheduler=None, **policies):
    requests = {
        "count": count,
        "arrival": arrival or {"process": "offline"},
        "prompt_tokens": prompt or {"distribution": "uniform", "low": 3, "high": 12},
        "output_tokens": output or {"distribution": "uniform", "low": 1, "high": 5},
    }
    return make_scenario(
        model=SMALL_MOE,
        cluster={"nodes": 1, "gpus_per_node": gpus, "device": PROFILE},
        workload={"phase": "serving", "requests": requests, "routing": {"source": "synthetic"}},
        policies={
            "gating": {"name": "dynamic"},
            "scheduler": scheduler or {"name": "continuous", "max_sequences": 4},
            **policies,
        },
    )


def _blocks(scenario) -> np.ndarray:
    return np.full(scenario.cluster.gpus, BLOCKS)


def _attend(block, kv, x, requests, new, context):
    segments = Segments(np.array(requests), np.array(new), np.array(context))
    index = StepIndex.of(segments, kv.slots(segments.request), torch.float64, "cpu")
    return serving_attention(block, x, index, kv.caches[0])


def _block(seed: int):
    model = make_scenario(model=SMALL_MOE).model
    gen = torch.Generator().manual_seed(seed)
    return AttentionBlock(model, gen, torch.float64, "cpu"), model, gen


def test_chunked_attention_over_the_kv_cache_equals_causal_attention_of_the_whole_prompt():
    """A prompt of 7 fed as chunks of 3, 2 and 2 and then two decodes, over its growing
    cache, gives each row what one causal attention over all 9 positions gives it."""
    block, model, gen = _block(0)
    x = torch.randn((9, model.d_model), generator=gen, dtype=torch.float64)
    whole = block(x, block.prompt_cache(9, torch.float64, "cpu"), 9)
    kv = KVStore([block], slots=2, positions=9, dtype=torch.float64, device="cpu")
    rows = [
        _attend(block, kv, x[first : first + n], [0], [n], [first])
        for first, n in ((0, 3), (3, 2), (5, 2), (7, 1), (8, 1))
    ]
    torch.testing.assert_close(torch.cat(rows), whole, rtol=1e-12, atol=1e-12)
    assert kv.bytes == 2 * 2 * block.kv_heads * 9 * block.head_dim * 8  # slots x K, V x ...
    kv.free(np.array([0]))
    assert kv.free_slots == [1, 0]


def test_a_step_of_decodes_and_prompts_attends_each_request_over_its_own_cache_only():
    """Two requests prefilled alone first (4 and 2 tokens); then one step decodes both
    (contexts 4 and 2) and prefills a fresh third request's 3 tokens: each row equals the
    same request's rows computed alone."""
    block, model, gen = _block(1)
    prompts = [
        torch.randn((n + 1, model.d_model), generator=gen, dtype=torch.float64) for n in (4, 2)
    ]
    fresh = torch.randn((3, model.d_model), generator=gen, dtype=torch.float64)
    alone = [
        block(p, block.prompt_cache(p.shape[0], torch.float64, "cpu"), p.shape[0]) for p in prompts
    ]
    alone.append(block(fresh, block.prompt_cache(3, torch.float64, "cpu"), 3))
    kv = KVStore([block], slots=3, positions=8, dtype=torch.float64, device="cpu")
    for request, p in enumerate(prompts):
        _attend(block, kv, p[:-1], [request], [p.shape[0] - 1], [0])
    x = torch.cat([prompts[0][-1:], prompts[1][-1:], fresh])
    together = _attend(block, kv, x, [0, 1, 2], [1, 1, 3], [4, 2, 0])
    expected = torch.cat([alone[0][-1:], alone[1][-1:], alone[2]])
    torch.testing.assert_close(together, expected, rtol=1e-12, atol=1e-12)


def test_a_lone_request_has_its_prefill_step_as_ttft_and_its_decode_steps_as_tpot():
    scenario = _serving(
        count=1,
        prompt={"distribution": "fixed", "value": 9},
        output={"distribution": "fixed", "value": 4},
    )
    records = serve(scenario, _blocks(scenario), warmup=1)
    steps, requests = records.steps, records.serving.requests
    assert steps.tokens.tolist() == [9, 1, 1, 1]  # the prompt, then a decode per later token
    end_n = steps.start_s + steps.latency_s
    assert requests.ttft_s[0] == pytest.approx(end_n[0])  # arrived at 0, first token at its end
    assert 0 <= steps.start_s[0] < 0.05  # the clock started just before it
    assert requests.tpot_s[0] == pytest.approx((end_n[-1] - end_n[0]) / 3)
    assert requests.finish_s[0] == pytest.approx(end_n[-1])
    np.testing.assert_allclose(records.serving.itl_s, np.diff(end_n))
    assert (steps.start_s[1:] >= end_n[:-1]).all()  # one step after the other
    assert steps.processed.tolist() == [9 * 2 * MOE_LAYERS, 4, 4, 4]  # tokens x top-2 x layers
    assert records.serving.duration_s == pytest.approx(end_n[-1])


def _conserved(records, scenario) -> None:
    requests = request_table(scenario)
    serving = records.serving
    result = Result.from_records(records).serving
    assert result.completed == len(requests) and result.waiting == result.running == 0
    tokens = int(requests.prompt_tokens.sum() + (requests.output_tokens - 1).sum())
    assert int(records.steps.tokens.sum()) == tokens
    assert int(serving.prefill_tokens.sum()) == int(requests.prompt_tokens.sum())
    assert int(serving.decode_tokens.sum()) == int((requests.output_tokens - 1).sum())
    assert serving.itl_s.size == int((requests.output_tokens - 1).sum())
    assert int(records.steps.processed.sum()) == tokens * 2 * MOE_LAYERS
    times = serving.requests
    assert (times.scheduled_s >= times.arrival_s).all()
    assert (times.first_token_s > times.scheduled_s).all()
    assert (times.finish_s >= times.first_token_s).all()


def test_requests_arriving_in_real_time_are_all_served_with_all_their_tokens():
    scenario = _serving(
        count=8,
        arrival={"process": "poisson", "rate": 200.0},
        scheduler={
            "name": "chunked",
            "max_sequences": 3,
            "max_batch_tokens": 8,
            "chunk_tokens": 4,
            "block_tokens": 4,
        },
    )
    records = serve(scenario, _blocks(scenario), warmup=1)
    _conserved(records, scenario)
    assert (records.steps.tokens <= 8).all()
    # no request is scheduled before it is due on the wall clock
    requests = records.serving.requests
    assert (requests.scheduled_s >= request_table(scenario).arrival_s).all()
    assert records.executor == "reference" and records.phase == "serving"


def test_two_ranks_serve_their_groups_round_robin_and_step_together():
    scenario = _serving(gpus=2, count=5, arrival={"process": "poisson", "rate": 300.0})
    records = serve(scenario, _blocks(scenario), warmup=1)
    _conserved(records, scenario)
    # 5 requests: 3 on the first rank, 2 on the second, every KV cache peak counted
    assert records.devices.kv_cache_bytes.size == 2 and (records.devices.kv_cache_bytes > 0).all()
    result = Result.from_records(records)
    assert sum(result.alltoall_bytes_by_kind.values()) > 0  # tokens crossed between the ranks


def _plan(request, new, context, prefill) -> StepPlan:
    ids = np.array(request)
    return StepPlan(ids, np.array(new), np.array(context), np.array(prefill), np.zeros(0, int))


def test_a_replay_runs_exactly_the_recorded_steps_each_repeat():
    """Two prompts prefilled together, then a decode stretch of 2 steps for both, then the
    longer request's last decode: 4 steps, whatever the requests' arrival times."""
    scenario = _serving(
        count=2,
        prompt={"distribution": "fixed", "value": 5},
        output={"distribution": "uniform", "low": 2, "high": 5},
    )
    output = request_table(scenario).output_tokens
    steps_left = int(output.min()) - 1
    replay = [([_plan([0, 1], [5, 5], [0, 0], [True, True])], 1)]
    if steps_left:
        replay.append(([_plan([0, 1], [1, 1], [5, 5], [False, False])], steps_left))
    longer = int(np.argmax(output))
    for later in range(int(output.max() - output.min())):
        context = 5 + steps_left + later
        replay.append(([_plan([longer], [1], [context], [False])], 1))
    runs = replay_steps(scenario, _blocks(scenario), replay, repeats=2, warmup=1)
    expected = [10] + [2] * steps_left + [1] * int(output.max() - output.min())
    assert [r.tokens.tolist() for r in runs] == [expected, expected]
    assert all((r.latency_s > 0).all() and r.start_s[0] == 0 for r in runs)


def test_a_replay_that_does_not_fit_the_state_is_refused():
    scenario = _serving(count=1, prompt={"distribution": "fixed", "value": 4})
    wrong = [([_plan([0], [1], [3], [False])], 1)]  # a decode after 3 tokens never prefilled
    with pytest.raises(Exception, match="not planned from"):
        replay_steps(scenario, _blocks(scenario), wrong, warmup=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gating": {"name": "static", "capacity_factor": 1.0}}, "dynamic gating only"),
        ({"placement": {"name": "greedy"}}, "greedy learns from a fixed batch"),
    ],
)
def test_what_the_serving_reference_cannot_run_is_one_line(change, message):
    scenario = _serving(**change)
    with pytest.raises(UnsupportedScenarioError, match=message):
        serve(scenario, _blocks(scenario))


def test_a_static_batch_that_never_fills_leaves_its_requests_waiting_as_in_the_simulator():
    """6 requests, batches of 4 without a timeout: one batch runs, 2 requests wait forever."""
    scenario = _serving(count=6, scheduler={"name": "static", "batch_size": 4})
    result = Result.from_records(serve(scenario, _blocks(scenario), warmup=0)).serving
    assert (result.completed, result.waiting, result.running) == (4, 2, 0)


def test_a_run_in_which_no_step_runs_leaves_every_request_waiting():
    scenario = _serving(count=2, scheduler={"name": "static", "batch_size": 4})
    records = serve(scenario, _blocks(scenario), warmup=0)
    result = Result.from_records(records).serving
    assert records.steps.tokens.size == 0 and (result.completed, result.waiting) == (0, 2)


def test_a_one_rank_run_reports_each_finished_request_as_it_goes():
    scenario = _serving(count=4, arrival={"process": "constant", "rate": 200.0})
    seen = []
    serve(scenario, _blocks(scenario), warmup=0, on_progress=lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (4, 4)
    assert len(seen) > 2 and {t for _, t in seen} == {4}  # not only the final count


def test_the_routing_stream_is_seeded_and_draws_distinct_experts_per_token_across_blocks():
    from moesim.reference.serving_routing import RoutingStream

    scenario = _serving()
    streams = [RoutingStream(scenario, MOE_LAYERS, 8, most_steps=2) for _ in range(2)]
    steps = [[s.take(n) for n in (8, 3, 5, 1)] for s in streams]  # the third starts a block
    for a, b in zip(*steps, strict=True):
        np.testing.assert_array_equal(a, b)
    for ids, n in zip(steps[0], (8, 3, 5, 1), strict=True):
        assert ids.shape == (1, MOE_LAYERS, n, 2)
        assert (ids[..., 0] != ids[..., 1]).all() and ids.min() >= 0 and ids.max() < 4
    wide = RoutingStream(scenario, MOE_LAYERS, 1 << 30)  # too wide to draw ahead
    assert wide.take(6).shape == (1, MOE_LAYERS, 6, 2)
