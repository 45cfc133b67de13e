"""Serving schedulers on small hand-made queues, plans asserted exactly; conservation at random."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.config import SCHEDULER, load_scenario
from moesim.errors import ConfigError
from moesim.policies import KVBlocks, ServingState, StepPlan, advance, decode_stretch

ROOT = Path(__file__).resolve().parents[2]


def scheduler(name: str, **params):
    return SCHEDULER.build(SCHEDULER.validate({"name": name, **params}))


def queue(prompts, outputs, blocks=1000, block_tokens=16, arrived=None) -> ServingState:
    state = ServingState(prompts, outputs, KVBlocks(blocks, block_tokens))
    state.arrive(np.arange(len(prompts)) if arrived is None else arrived)
    return state


def rows(plan: StepPlan) -> list[tuple[int, int, int, bool]]:
    """(request, new tokens, context, prefill) per planned request."""
    return list(
        zip(
            plan.request.tolist(),
            plan.new_tokens.tolist(),
            plan.context.tolist(),
            plan.is_prefill.tolist(),
            strict=True,
        )
    )


def step(policy, state: ServingState, wait_s: float = 0.0):
    plan = policy.plan(state, wait_s)
    outcome = advance(state, plan)
    ids = (outcome.emitted.tolist(), outcome.first_token.tolist(), outcome.finished.tolist())
    return plan, ids


# ---- continuous ------------------------------------------------------------------------------


def test_continuous_admits_up_to_max_sequences_then_decodes_them() -> None:
    policy = scheduler("continuous", max_sequences=2, max_batch_tokens=100)
    state = queue([10, 20, 30], [5, 5, 5])
    plan, (emitted, first, finished) = step(policy, state)
    assert rows(plan) == [(0, 10, 0, True), (1, 20, 0, True)]  # room for two sequences
    assert (emitted, first, finished) == ([0, 1], [0, 1], [])  # a whole prompt emits a token
    plan, _ = step(policy, state)
    assert rows(plan) == [(0, 1, 10, False), (1, 1, 20, False)]  # request 2 waits
    assert state.waiting.tolist() == [2]


def test_continuous_token_budget_stops_at_the_first_prompt_that_does_not_fit() -> None:
    policy = scheduler("continuous", max_sequences=8, max_batch_tokens=32)
    state = queue([10, 30, 2], [3, 3, 3])
    plan, _ = step(policy, state)
    assert rows(plan) == [(0, 10, 0, True)]  # 10 + 30 > 32; request 2 does not skip ahead
    plan, _ = step(policy, state)
    assert rows(plan) == [(0, 1, 10, False), (1, 30, 0, True)]  # 1 + 30 <= 32, + 2 > 32
    assert plan.tokens == 31 and plan.prefill_tokens == 30 and plan.decode_tokens == 1


def test_continuous_admits_while_blocks_cover_each_prompt_and_one_token() -> None:
    policy = scheduler("continuous", max_batch_tokens=1000)
    state = queue([20, 16, 1], [4, 4, 4], blocks=4)
    plan, _ = step(policy, state)
    # reserves ceil(21/16) = 2, ceil(17/16) = 2 (total 4), then ceil(2/16) = 1 > 0 left
    assert rows(plan) == [(0, 20, 0, True), (1, 16, 0, True)]
    assert state.kv.used_blocks == 3  # holds ceil(20/16) + ceil(16/16)
    plan, _ = step(policy, state)
    # request 1 grows to 17 tokens (its second block): no block left for request 2
    assert rows(plan) == [(0, 1, 20, False), (1, 1, 16, False)]
    assert state.kv.free_blocks == 0 and state.waiting.tolist() == [2]


def test_preemption_frees_the_newest_first_and_recomputes_prompt_and_output() -> None:
    policy = scheduler("continuous", max_sequences=4, max_batch_tokens=16, block_tokens=4)
    state = queue([3, 3, 3], [4, 4, 4], blocks=3, block_tokens=4)
    plan, (_, first, _) = step(policy, state)  # each reserves ceil(4/4) = 1 block, holds 1
    assert rows(plan) == [(0, 3, 0, True), (1, 3, 0, True), (2, 3, 0, True)]
    assert first == [0, 1, 2]
    plan, _ = step(policy, state)  # context 3 + 1 = 4 tokens: still one block each
    assert rows(plan) == [(0, 1, 3, False), (1, 1, 3, False), (2, 1, 3, False)]
    # 5 tokens need a second block each and none is free: request 0 preempts the newest (2);
    # request 1 finds no newer one left and preempts itself (vLLM's order)
    plan, (emitted, _, _) = step(policy, state)
    assert rows(plan) == [(0, 1, 4, False)] and plan.preempted.tolist() == [1, 2]
    assert emitted == [0]
    assert state.waiting.tolist() == [1, 2]  # at the front, in admission order
    assert state.preemptions_R.tolist() == [0, 1, 1]
    assert state.prefill_tokens_R.tolist() == [3, 5, 5]  # prompt 3 + 2 generated
    assert state.context_R.tolist() == [5, 0, 0] and state.kv.used_blocks == 2
    plan, (_, _, finished) = step(policy, state)  # 1 reserves ceil(6/4) = 2 > 1 free
    assert rows(plan) == [(0, 1, 5, False)] and finished == [0]
    plan, (emitted, first, _) = step(policy, state)  # 3 blocks free: 1 fits, 2 (2 more) not
    assert rows(plan) == [(1, 5, 0, True)]
    assert (emitted, first) == ([1], [])  # its third token, not a first one
    assert state.generated_R.tolist() == [4, 3, 2]
    plan, (_, _, finished) = step(policy, state)
    assert rows(plan) == [(1, 1, 5, False)] and finished == [1]
    plan, _ = step(policy, state)
    assert rows(plan) == [(2, 5, 0, True)]
    plan, (_, _, finished) = step(policy, state)
    assert finished == [2] and state.idle and state.kv.used_blocks == 0


# ---- chunked ---------------------------------------------------------------------------------


def test_chunked_shares_the_budget_decodes_first_then_partial_prompts_then_new() -> None:
    policy = scheduler("chunked", max_sequences=4, max_batch_tokens=16, chunk_tokens=8)
    state = queue([20, 6, 3, 8], [2, 2, 2, 2], block_tokens=4, arrived=[0, 1, 2])
    plan, (emitted, first, _) = step(policy, state)
    # chunks min(prompt, 8) = 8, 6 fit (14); request 2 takes the 2 tokens left of 3
    assert rows(plan) == [(0, 8, 0, True), (1, 6, 0, True), (2, 2, 0, True)]
    assert (emitted, first) == ([1], [1])  # request 1's prompt is complete
    state.arrive([3])
    plan, (emitted, first, finished) = step(policy, state)
    # decode 1 (1), request 0 continues (8, before new ones), 2 ends its prompt (1), and the
    # newcomer 3 gets the 6 tokens left (its 4th sequence)
    assert rows(plan) == [(1, 1, 6, False), (0, 8, 8, True), (2, 1, 2, True), (3, 6, 0, True)]
    assert (emitted, first, finished) == ([1, 2], [2], [1])
    plan, (emitted, first, finished) = step(policy, state)
    assert rows(plan) == [(2, 1, 3, False), (0, 4, 16, True), (3, 2, 6, True)]
    assert (emitted, first, finished) == ([2, 0, 3], [0, 3], [2])
    plan, (_, _, finished) = step(policy, state)
    assert rows(plan) == [(0, 1, 20, False), (3, 1, 8, False)] and finished == [0, 3]


def test_chunked_budget_left_over_by_decodes_limits_the_chunk() -> None:
    policy = scheduler("chunked", max_sequences=8, max_batch_tokens=16, chunk_tokens=16)
    state = queue([2, 2, 2, 30], [9, 9, 9, 2], arrived=[0, 1, 2])
    step(policy, state)
    state.arrive([3])
    plan, _ = step(policy, state)  # three decodes leave 13 tokens of the 16
    assert rows(plan) == [(0, 1, 2, False), (1, 1, 2, False), (2, 1, 2, False), (3, 13, 0, True)]


# ---- static ----------------------------------------------------------------------------------


def test_static_waits_for_a_full_batch_and_runs_it_to_completion() -> None:
    policy = scheduler("static", batch_size=2)
    state = queue([5, 7, 4], [2, 3, 1], arrived=[0])
    plan, _ = step(policy, state, wait_s=100.0)
    assert plan.empty and policy.admit_in_s(state, 100.0) is None  # no timeout: wait
    state.arrive([1, 2])
    plan, _ = step(policy, state)
    assert rows(plan) == [(0, 5, 0, True), (1, 7, 0, True)]
    plan, (_, _, finished) = step(policy, state)
    assert rows(plan) == [(0, 1, 5, False), (1, 1, 7, False)] and finished == [0]
    plan, (_, _, finished) = step(policy, state)
    assert rows(plan) == [(1, 1, 8, False)] and finished == [1]  # 2 waits for the batch
    plan, _ = step(policy, state, wait_s=100.0)
    assert plan.empty and state.waiting.tolist() == [2]


def test_static_admits_a_short_batch_once_the_oldest_has_waited_the_timeout() -> None:
    policy = scheduler("static", batch_size=4, timeout_s="1s")
    state = queue([5, 7], [2, 2])
    plan, _ = step(policy, state, wait_s=0.4)
    assert plan.empty and policy.admit_in_s(state, 0.4) == pytest.approx(0.6)
    plan, _ = step(policy, state, wait_s=1.0)
    assert rows(plan) == [(0, 5, 0, True), (1, 7, 0, True)]
    assert policy.admit_in_s(state, 0.0) is None  # a batch is running


# ---- stretches, refusals, validation ---------------------------------------------------------


def test_a_decode_stretch_ends_at_the_first_finish_or_the_last_free_block() -> None:
    policy = scheduler("continuous", block_tokens=4, max_sequences=8, max_batch_tokens=64)
    state = queue([4, 2], [10, 6], blocks=5, block_tokens=4)
    step(policy, state)  # holds 1 + 1 blocks, 3 free
    plan = policy.plan(state)
    # request 1 finishes after 5 more tokens; by then 0 holds ceil(9/4) = 3 and 1 ceil(7/4) = 2
    assert decode_stretch(state, plan) == 5
    advance(state, plan, steps=5)
    assert state.generated_R.tolist() == [6, 6] and state.running.tolist() == [0]
    assert state.kv.used_blocks == 3  # request 1 freed its blocks
    tight = queue([4, 4], [9, 9], blocks=4, block_tokens=4)
    step(policy, tight)  # 1 + 1 blocks, 2 free: 4 more tokens each fill them (context 8)
    assert decode_stretch(tight, policy.plan(tight)) == 4


def test_requests_that_could_never_run_are_refused_in_one_line() -> None:
    too_long = queue([20], [13], blocks=2, block_tokens=16)  # 33 tokens: 3 blocks
    with pytest.raises(ConfigError) as caught:
        scheduler("chunked").check(too_long)
    assert str(caught.value) == (
        "workload.requests: request 0 (20 prompt + 13 output tokens) needs 3 KV blocks of 16 "
        "tokens; the KV cache holds 2"
    )
    recompute = queue([30, 60], [50, 1])  # 30 + 50 - 1 = 79 > 64
    with pytest.raises(ConfigError, match="request 0 may prefill 79") as caught:
        scheduler("continuous", max_sequences=4, max_batch_tokens=64).check(recompute)
    assert caught.value.field == "policies.scheduler.max_batch_tokens"
    scheduler("chunked", max_sequences=4, max_batch_tokens=64, chunk_tokens=32).check(recompute)


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"name": "continuous", "max_batch_tokens": 8}, "policies.scheduler", "one KV block"),
        ({"name": "chunked", "chunk_tokens": 9000}, "policies.scheduler", "chunk_tokens (9000)"),
        ({"name": "continuous", "max_sequences": 0}, "policies.scheduler.max_sequences", "greater"),
        ({"name": "static", "batch_size": 2.5}, "policies.scheduler.batch_size", "integer"),
        ({"name": "fifo"}, "policies.scheduler", "unknown scheduler policy"),
        (
            {"name": "chunked", "max_sequences": 300, "max_batch_tokens": 256},
            "policies.scheduler",
            "smaller than max_sequences",
        ),
    ],
)
def test_bad_scheduler_parameters_are_one_line(tmp_path, params, field, fragment) -> None:
    data = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    data.setdefault("policies", {})["scheduler"] = params
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert caught.value.field == field
    assert fragment in caught.value.message and "\n" not in str(caught.value)


def test_the_default_scheduler_is_continuous() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    assert scenario.policies.scheduler == SCHEDULER.validate("continuous")
    assert (
        scenario.policies.scheduler.max_sequences,
        scenario.policies.scheduler.max_batch_tokens,
    ) == (256, 8192)


# ---- conservation ----------------------------------------------------------------------------

POLICIES = [
    ("static", {"batch_size": 5, "timeout_s": 0.0}),
    ("continuous", {"max_sequences": 6, "max_batch_tokens": 128}),
    ("chunked", {"max_sequences": 6, "max_batch_tokens": 64, "chunk_tokens": 24}),
]


def serve(name: str, params: dict, state: ServingState, arrivals: list, stretches: bool):
    """Run to empty, arriving ``arrivals[i]`` before step ``i``: the most sequences in a step
    and each request's finishing step, after checking every invariant on the way."""
    policy = scheduler(name, block_tokens=state.kv.block_tokens, **params)
    policy.check(state)
    requests = state.prompt_tokens_R.size
    emitted_R, first_R, finished_R = (np.zeros(requests, dtype=np.int64) for _ in range(3))
    finish_step_R = np.full(requests, -1)
    steps = max_running = 0
    while steps < len(arrivals) or not state.idle:
        if steps < len(arrivals):
            state.arrive(arrivals[steps])
        plan = policy.plan(state, oldest_wait_s=1.0)
        assert np.unique(plan.request).size == plan.request.size
        if name != "static":
            assert plan.tokens <= params["max_batch_tokens"]
        repeat = decode_stretch(state, plan) if stretches and steps >= len(arrivals) else 1
        sequences = np.setdiff1d(np.union1d(state.running, plan.request), plan.preempted)
        max_running = max(max_running, sequences.size)
        outcome = advance(state, plan, steps=repeat)
        steps += repeat
        emitted_R[outcome.emitted] += repeat
        first_R[outcome.first_token] += 1
        finished_R[outcome.finished] += 1
        finish_step_R[outcome.finished] = steps
        assert state.kv.used_blocks <= state.kv.total_blocks
        assert state.kv.used_blocks == state.kv.held(state.running).sum()
        assert steps < 100_000
    assert (emitted_R == state.output_tokens_R).all() and (state.generated_R == emitted_R).all()
    assert (first_R == 1).all() and (finished_R == 1).all()
    assert state.kv.used_blocks == 0
    return max_running, finish_step_R


@pytest.mark.parametrize(("name", "params"), POLICIES, ids=[p[0] for p in POLICIES])
def test_every_request_finishes_with_its_output_and_frees_its_blocks(name, params) -> None:
    rng = np.random.default_rng(7)
    requests = 60
    prompts, outputs = rng.integers(1, 60, requests), rng.integers(1, 40, requests)
    arrivals = np.array_split(np.arange(requests), 25)  # a few at a time over 25 steps
    state = queue(prompts, outputs, blocks=24, block_tokens=8, arrived=[])
    max_running, _ = serve(name, params, state, arrivals, stretches=False)
    limit = params.get("max_sequences", params.get("batch_size"))
    assert 1 < max_running <= limit
    assert state.preemptions_R.sum() > 0  # 24 blocks of 8 tokens are tight: preemption ran


@pytest.mark.parametrize(("name", "params"), POLICIES, ids=[p[0] for p in POLICIES])
def test_decode_stretches_give_the_same_timeline_as_single_steps(name, params) -> None:
    rng = np.random.default_rng(3)
    prompts, outputs = rng.integers(1, 60, 30), rng.integers(1, 40, 30)
    single = queue(prompts, outputs, blocks=24, block_tokens=8)
    stretched = queue(prompts, outputs, blocks=24, block_tokens=8)
    _, steps_single = serve(name, params, single, [], stretches=False)
    _, steps_stretched = serve(name, params, stretched, [], stretches=True)
    assert steps_single.tolist() == steps_stretched.tolist()
    assert single.preemptions_R.tolist() == stretched.preemptions_R.tolist()


@pytest.mark.parametrize(("name", "params"), POLICIES, ids=[p[0] for p in POLICIES])
def test_a_cache_that_fits_exactly_n_sequences_never_runs_more(name, params) -> None:
    # prompt 20 + output 5 peak at 24 tokens, 3 blocks of 8; admission reserves ceil(21/8) = 3
    state = queue([20] * 12, [5] * 12, blocks=3 * 4, block_tokens=8)
    params = {**params, "chunk_tokens": 24} if name == "chunked" else params
    max_running, _ = serve(name, params, state, [], stretches=False)
    assert max_running == 4 and state.preemptions_R.sum() == 0
