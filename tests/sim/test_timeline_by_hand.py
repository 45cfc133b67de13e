"""Exact step timings of tiny cases, worked out by hand from the documented cost model.

Profile: 1e12 FLOP/s fp32, memory bandwidth so high that every op is compute-bound, no launch
overhead, NVLink 1e9 B/s with 1 us latency, network 1e8 B/s with 10 us. Model: 2 layers (layer
0 dense, layer 1 MoE), d_model 4, d_ffn 8, 4 experts, top-1, 1 head, vocabulary 10, fp32.
Decode, 4 sequences with 1 position of context: 2 tokens per GPU. Experts 0,1 on GPU 0 and
2,3 on GPU 1. Routing of the single step: tokens 0..3 -> experts 2, 0, 3, 0.
"""

import numpy as np
import pytest

from moesim.api import run
from moesim.sim.engine import OutOfMemoryError
from tests.conftest import make_scenario, trace_workload, workload

ATTENTION = (2 * 2 * 64 + 4 * 2 * 1 * 4) / 1e12  # projections (64 params) + core, 2 tokens
DENSE_FFN = 2 * 2 * 64 / 1e12  # 2 * 4 * 8 params, 2 tokens
LM_HEAD = 2 * 2 * 10 * 4 / 1e12


@pytest.fixture
def trace(tmp_path):
    return trace_workload(tmp_path / "route.npz", np.array([2, 0, 3, 0]).reshape(1, 1, 4, 1))


def test_dynamic_gating_step_by_hand(trace) -> None:
    result, _ = run(make_scenario(workload=trace))
    gate = 2 * 2 * 4 * 4 / 1e12  # router GEMM over 4 experts
    count_exchange = 1e-6 + 2 * 4 / 1e9  # an int32 for each of the peer's 2 experts
    alltoall = 1e-6 + 16 / 1e9  # each GPU sends one row of 16 bytes and receives one
    expert = 2 * 2 * 64 / 1e12  # GPU 0: expert 0 with 2 tokens; GPU 1: 1 + 1 tokens
    expected = {
        "attention": 2 * ATTENTION,  # layers 0 and 1
        "dense_ffn": DENSE_FFN,
        "gate": gate,
        "alltoall": count_exchange + 2 * alltoall,
        "expert": expert,
        "transfer": 0.0,
        "other": LM_HEAD,
        "allreduce": 0.0,
    }
    assert result.time_breakdown_s == pytest.approx(expected, rel=1e-12)
    assert result.latency_s.mean == pytest.approx(sum(expected.values()), rel=1e-12)
    assert result.alltoall_bytes == 2 * (16 + 16) + 2 * 8
    assert result.load_imbalance == pytest.approx(1.0)
    assert result.tokens.model_dump() == {"routed": 4, "processed": 4, "dropped": 0, "padded": 0}
    assert result.throughput_tokens_per_s == pytest.approx(4 / sum(expected.values()))


def test_static_gating_step_by_hand(trace) -> None:
    gating = {"gating": {"name": "static", "capacity_factor": 1.0, "min_capacity": 1}}
    result, _ = run(make_scenario(workload=trace, policies=gating))
    # C = max(1, ceil(1 * 1 * 2 / 4)) = 1 slot per (source GPU, expert); nothing drops.
    mask = 2 * 4 * 1  # S x E x C
    gate = (2 * 2 * 4 * 4 + 2 * 2 * mask * 4) / 1e12  # router + dispatch and combine einsums
    alltoall = 1e-6 + 2 * 16 / 1e9  # one padded row to each of the 2 remote experts
    expert = 2 * (2 * 2 * 64) / 1e12  # 2 local experts, 2 slots each
    assert result.time_breakdown_s["gate"] == pytest.approx(gate, rel=1e-12)
    assert result.time_breakdown_s["alltoall"] == pytest.approx(2 * alltoall, rel=1e-12)
    assert result.time_breakdown_s["expert"] == pytest.approx(expert, rel=1e-12)
    total = 2 * ATTENTION + DENSE_FFN + gate + 2 * alltoall + expert + LM_HEAD
    assert result.latency_s.mean == pytest.approx(total, rel=1e-12)
    assert result.tokens.model_dump() == {"routed": 4, "processed": 4, "dropped": 0, "padded": 4}


def test_across_nodes_the_network_sets_the_alltoall(trace) -> None:
    two_nodes = {"nodes": 2, "gpus_per_node": 1, "device": make_scenario().cluster.device}
    result, _ = run(make_scenario(workload=trace, cluster=two_nodes.copy()))
    count_exchange = 1e-5 + 8 / 1e8
    alltoall = 1e-5 + 16 / 1e8
    assert result.time_breakdown_s["alltoall"] == pytest.approx(count_exchange + 2 * alltoall)


def test_memory_by_hand(trace) -> None:
    result, _ = run(make_scenario(workload=trace))
    # non-expert: embeddings 10*4 + 2 attention blocks * 64 + 1 dense FFN * 64 + router 4*4
    # = 248 params; local experts: 2 * 64 params; fp32.
    assert result.memory.weights_bytes_per_device == [(248 + 128) * 4.0] * 2
    # KV: 2 sequences * 1 position * (K+V width 8) * 4 bytes * 2 layers
    assert result.memory.kv_cache_bytes_per_device == [128.0, 128.0]
    assert not result.memory.out_of_memory

    def with_capacity(capacity: float):
        device = make_scenario(workload=trace).cluster.device.model_dump()
        device["memory"]["capacity"] = capacity
        cluster = {"nodes": 1, "gpus_per_node": 2, "device": device}
        return make_scenario(workload=trace, cluster=cluster)

    # weights + KV = 1632 bytes: below that nothing runs, above it activations may not fit
    with pytest.raises(OutOfMemoryError, match=r"holds 0\.00 GiB of weights and KV cache"):
        run(with_capacity(1631))
    cramped, _ = run(with_capacity(1640))
    assert cramped.memory.out_of_memory


def test_memory_bound_decode_with_launch_overhead_by_hand(trace) -> None:
    # Slow memory (1e9 B/s) and 1 us per kernel launch: the decode step is memory-bound.
    scenario = make_scenario(workload=trace)
    device = scenario.cluster.device.model_dump()
    device["memory"]["bandwidth"] = 1e9
    device["compute"]["launch_overhead"] = 1e-6
    cluster = {"nodes": 1, "gpus_per_node": 2, "device": device}
    result, _ = run(make_scenario(workload=trace, cluster=cluster))
    launch = 1e-6
    # attention block, 2 tokens, context 1: weights 64 params, activations 2 * (2*4 + 4 + 8)
    # elements, KV read 2 * 1 * 8 elements; fp32; 5 launches
    attention = 5 * launch + (64 + 2 * (2 * 4 + 4 + 8) + 2 * 1 * 8) * 4 / 1e9
    dense = 3 * launch + (64 + 2 * (2 * 4 + 8)) * 4 / 1e9  # 3 launches, hidden 8
    # router: weights 4*4, input 2*4 (fp32), scores 3 * 2 * 4 in fp32; gathers 2*2*2*4 rows
    # plus 2 * 16 bytes of indices; 8 launches
    gate = 8 * launch + (16 * 4 + 8 * 4 + 3 * 2 * 4 * 4 + 2 * 2 * 2 * 4 * 4 + 2 * 16) / 1e9
    expert_2 = 3 * launch + (64 + 2 * (2 * 4 + 8)) * 4 / 1e9  # GPU 0: expert 0, 2 tokens
    expert_1 = 3 * launch + (64 + 1 * (2 * 4 + 8)) * 4 / 1e9
    expert = max(expert_2, 2 * expert_1)  # GPU 1 runs experts 2 and 3, one token each
    lm_head = 2 * launch + (40 + 2 * (4 + 10)) * 4 / 1e9
    comm = (1e-6 + 8 / 1e9) + 2 * (1e-6 + 16 / 1e9) + 3 * launch  # each collective launches
    breakdown = result.time_breakdown_s
    assert breakdown["attention"] == pytest.approx(2 * attention, rel=1e-12)
    assert breakdown["dense_ffn"] == pytest.approx(dense, rel=1e-12)
    assert breakdown["gate"] == pytest.approx(gate, rel=1e-12)
    assert breakdown["expert"] == pytest.approx(expert, rel=1e-12)
    assert breakdown["other"] == pytest.approx(lm_head, rel=1e-12)
    assert breakdown["alltoall"] == pytest.approx(comm, rel=1e-12)


def test_scoring_every_position_runs_the_lm_head_on_every_token_by_hand() -> None:
    """Prefill of 2 prompts of 4 tokens on 2 GPUs (4 tokens each), vocabulary 10, d_model 4,
    fp32, 1 TFLOP/s, infinite bandwidth: the LM head costs 2 x rows x 10 x 4 / 1e12 s per step,
    rows = 1 (each GPU's last position) or 4 (every position, ``logits: all``); the logits of
    4 rows hold 4 x 10 x 4 bytes, more than the GPU's other dense activations."""
    results = {}
    for logits in ("last", "all"):
        scenario = make_scenario(
            workload=workload(phase="prefill", batch_size=2, seq_len=4, steps=1, logits=logits)
        )
        results[logits], _ = run(scenario)
    assert results["last"].time_breakdown_s["other"] == pytest.approx(2 * 1 * 10 * 4 / 1e12)
    assert results["all"].time_breakdown_s["other"] == pytest.approx(2 * 4 * 10 * 4 / 1e12)
    streams = 2 * 4 * 4 * 4  # hidden and residual streams of 4 tokens
    assert max(results["all"].memory.activation_peak_bytes_per_device) >= streams + 4 * 10 * 4
