"""Two-batch overlap: hand-computed timelines of the schedule, and what overlap changes in a
run (the step's timing) and what it does not (tokens, bytes, memory)."""

import numpy as np
import pytest

from moesim.api import run
from moesim.metrics import PHASES
from moesim.sim.overlap import OPS, two_batch
from tests.conftest import SIMPLE_PROFILE, TINY_MODEL, make_scenario, workload


def _one(value: float, layers: int = 1) -> np.ndarray:
    return np.full((1, layers), value)


def test_compute_bound_gains_only_the_hidden_communication() -> None:
    # pre 2, dispatch 1, experts 2, combine 1 per micro-batch: compute runs back to back
    # (pre A, pre B, experts A, experts B = 8), only the last combine stays exposed
    timeline = two_batch(_one(2.0), _one(1.0), _one(2.0), _one(1.0), np.zeros(1))
    assert timeline.latency_N[0] == pytest.approx(9.0)
    starts = dict(zip(OPS, timeline.start_NLO[0, 0], strict=True))
    assert starts[("dispatch", "comm", 0)] == 2.0  # as soon as pre A ends
    assert starts[("expert", "compute", 0)] == 4.0  # after pre B: the stream was busy
    assert starts[("combine", "comm", 1)] == 8.0


def test_communication_bound_is_the_communication_plus_the_exposed_compute() -> None:
    # pre 1, dispatch 3, experts 1, combine 3: 12 s of communication after pre A's 1 s
    timeline = two_batch(_one(1.0), _one(3.0), _one(1.0), _one(3.0), np.zeros(1))
    assert timeline.latency_N[0] == pytest.approx(13.0)


def test_a_layer_waits_for_its_micro_batch_combine_and_the_tails_run_in_turn() -> None:
    # everything 1 s over two layers (by hand: layer 2's pre A starts at 4, when combine A
    # of layer 1 ends; the last combine B ends at 9), then tails of 0.5 s: 8.5 and 9.5
    timeline = two_batch(_one(1.0, 2), _one(1.0, 2), _one(1.0, 2), _one(1.0, 2), np.full(1, 0.5))
    assert timeline.start_NLO[0, 1, 0] == 4.0
    assert timeline.tail_start_NM[0].tolist() == [8.0, 9.0]
    assert timeline.latency_N[0] == pytest.approx(9.5)


def _run(overlap: str, trace_steps: int = 0):
    scenario = make_scenario(
        model={**TINY_MODEL, "moe_every": 1},
        workload=workload(batch_size=8, steps=3),
        policies={"gating": {"name": "dynamic"}, "overlap": {"name": overlap}},
    )
    return run(scenario, trace_steps=trace_steps)


def test_overlap_changes_the_timing_not_the_accounting() -> None:
    (plain, plain_records), (overlapped, records) = _run("none"), _run("two_batch", 1)
    assert overlapped.tokens == plain.tokens
    assert overlapped.alltoall_bytes == plain.alltoall_bytes
    np.testing.assert_array_equal(
        records.devices.weights_bytes, plain_records.devices.weights_bytes
    )
    # the breakdown sums to the latency; exposed communication is what compute did not cover
    breakdown = records.steps.breakdown_NP
    np.testing.assert_allclose(breakdown.sum(axis=1), records.steps.latency_s, rtol=1e-12)
    assert (breakdown >= 0).all()
    # the trace shows both micro-batches on both streams
    names = set(records.spans.name.tolist())
    assert {
        "dispatch (micro-batch 0)",
        "combine (micro-batch 1)",
        "attention+router (micro-batch 1)",
    } <= names
    assert set(records.spans.stream.tolist()) == {"compute", "comm"}


def test_communication_kernels_holding_sms_slow_the_compute_beside_them() -> None:
    def breakdown(fraction: float) -> np.ndarray:
        scenario = make_scenario(
            model={**TINY_MODEL, "moe_every": 1},
            workload=workload(batch_size=8, steps=2),
            policies={"overlap": {"name": "two_batch", "comm_sm_fraction": fraction}},
        )
        return run(scenario)[1].steps.breakdown_NP

    free, shared = breakdown(0.0), breakdown(0.5)
    compute = [PHASES.index(p) for p in ("attention", "gate", "expert", "other")]
    # on half the SMs every compute phase takes twice as long
    np.testing.assert_allclose(shared[:, compute], 2 * free[:, compute], rtol=1e-12)


def test_a_gpu_with_one_token_runs_it_in_one_micro_batch_only() -> None:
    """Micro-batches split every GPU's tokens 1 and 0: the second is empty, so on one GPU
    (nothing to hide) two-batch costs exactly what one batch does."""

    def latency(overlap: str, batch: int) -> float:
        scenario = make_scenario(
            model={**TINY_MODEL, "moe_every": 1},
            cluster={"nodes": 1, "gpus_per_node": 1, "device": SIMPLE_PROFILE},
            workload=workload(batch_size=batch, steps=1),
            policies={"overlap": {"name": overlap}},
        )
        return run(scenario)[0].latency_s.mean

    assert latency("two_batch", 1) == pytest.approx(latency("none", 1), rel=1e-12)
    # 3 tokens: micro-batches of 2 and 1; on this profile work is linear in the tokens (no
    # launches, free memory), so the split costs nothing either (rounding both up: 4 tokens)
    assert latency("two_batch", 3) == pytest.approx(latency("none", 3), rel=1e-12)
