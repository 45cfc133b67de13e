"""Result is a pure function of records; the Chrome trace has one lane per device and stream."""

import itertools
import json

import numpy as np
import pytest

from moesim.api import run
from moesim.metrics import PHASES, DeviceRecords, Result, RunRecords, StepRecords, chrome_trace
from tests.conftest import make_scenario, workload


def _records() -> RunRecords:
    breakdown = np.zeros((4, len(PHASES)))
    breakdown[:, PHASES.index("expert")] = [1.0, 2.0, 3.0, 4.0]
    steps = StepRecords(
        start_s=np.array([0.0, 1.0, 3.0, 6.0]),
        latency_s=np.array([1.0, 2.0, 3.0, 4.0]),
        tokens=np.full(4, 10),
        routed=np.full(4, 20),
        processed=np.array([20, 18, 20, 19]),
        dropped=np.array([0, 2, 0, 1]),
        padded=np.array([5, 0, 5, 1]),
        alltoall_bytes_NK=np.tile([0.0, 60.0, 40.0], (4, 1)),
        load_imbalance=np.array([1.0, np.nan, 2.0, 3.0]),
        breakdown_NP=breakdown,
        busiest_tokens_NL=np.array([[6], [0], [5], [9]]),
        expert_tokens_NL=np.array([[10], [0], [10], [10]]),
        cache_hits=np.array([0, 3, 4, 5]),
        cache_misses=np.array([4, 1, 0, 3]),
        cache_evictions=np.array([0, 1, 0, 3]),
        host_to_device_bytes=np.array([40.0, 10.0, 0.0, 30.0]),
    )
    devices = DeviceRecords(
        capacity_bytes=100.0,
        weights_bytes=np.array([50.0, 60.0]),
        kv_cache_bytes=np.array([10.0, 10.0]),
        activation_peak_bytes=np.array([20.0, 35.0]),
        expert_tokens_LG=np.array([[20.0, 10.0]]),
        expert_weights_bytes=np.array([30.0, 40.0]),
    )
    cache = {"name": "lifo", "slots_per_layer": 2, "prefetch": "none", "step_aware": True}
    return RunRecords(
        "r", "sim", "dev", 2, "decode", steps, devices, cache=cache, wall_seconds=0.5, events=4
    )


def test_result_from_records_by_hand() -> None:
    result = Result.from_records(_records())
    assert result.simulated_seconds == 10.0
    assert result.throughput_tokens_per_s == 4.0  # 40 tokens in 10 s
    assert result.latency_s.mean == 2.5
    assert result.latency_s.p50 == 2.5
    assert result.latency_s.p99 == pytest.approx(3.97)  # numpy linear interpolation
    assert result.tokens.model_dump() == {"routed": 80, "processed": 77, "dropped": 3, "padded": 11}
    assert result.load_imbalance == 2.0  # NaN steps are skipped
    assert result.memory.peak_bytes_per_device == [80.0, 105.0]
    assert result.memory.out_of_memory
    assert result.time_breakdown_s["expert"] == 10.0
    assert result.per_step["load_imbalance"] == [1.0, None, 2.0, 3.0]
    assert result.alltoall_bytes == 400.0
    assert result.alltoall_bytes_by_kind == {"nvlink": 240.0, "network": 160.0}
    placement = result.placement
    assert placement.max_load == 0.9  # 9 of 10 tokens in step 3; step 1 had none
    assert placement.avg_max_load == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert placement.gpu_tokens_by_layer == [[5.0, 2.5]]  # per step over 4 steps
    assert placement.imbalance_by_layer == [pytest.approx(5.0 / 3.75)]
    assert placement.max_gpu_tokens == 5.0  # (6 + 0 + 5 + 9) / 4
    assert placement.mean_gpu_tokens == 3.75  # 30 tokens / 4 steps / 2 GPUs
    cache = result.cache
    assert (cache.hits, cache.misses, cache.evictions) == (12, 8, 4)
    assert cache.hit_rate == 0.6
    assert cache.bytes_host_to_device == 80.0
    assert cache.stall_s == 0.0 and cache.expert_bytes_per_device == [30.0, 40.0]
    assert result.per_step["cache_misses"] == [4, 1, 0, 3]


def test_chrome_trace_lanes_and_spans(tmp_path) -> None:
    scenario = make_scenario(workload=workload(phase="prefill", batch_size=2, seq_len=8, steps=3))
    _result, records = run(scenario, trace_steps=2)
    trace = chrome_trace(records.spans)
    json.dumps(trace)  # serialisable
    names = {(e["pid"], e["args"]["name"]) for e in trace["traceEvents"] if e["ph"] == "M"}
    assert {(0, "GPU 0"), (1, "GPU 1"), (0, "compute"), (0, "comm")} <= names
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["args"]["step"] for e in spans} == {0, 1}
    # the last span of step 0 ends where step 1 starts, and nothing overlaps on a lane
    step1 = records.steps.start_s[1] * 1e6
    assert max(e["ts"] + e["dur"] for e in spans if e["args"]["step"] == 0) == pytest.approx(step1)
    for lane in {(e["pid"], e["tid"]) for e in spans}:
        ordered = sorted((e["ts"], e["dur"]) for e in spans if (e["pid"], e["tid"]) == lane)
        for (start, dur), (next_start, _) in itertools.pairwise(ordered):
            assert start + dur <= next_start + 1e-9
    assert {e["name"] for e in spans} >= {"attention", "gate", "dispatch", "expert", "combine"}
