"""Expert buffering in whole runs: copies by hand, cold and warm caches, memory, the paper."""

from pathlib import Path

import numpy as np
import pytest

from moesim.api import load_scenario, run
from moesim.workload import routing_chunks
from tests.conftest import TINY_MODEL, make_scenario, trace_workload

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_copies_by_hand(tmp_path) -> None:
    # One GPU, 2 tokens to experts 0 and 1, one slot: both miss; each copy takes
    # 10 us + 256 B / 1 GB/s; the second expert waits for the second copy.
    cluster = {"nodes": 1, "gpus_per_node": 1, "device": make_scenario().cluster.device}
    workload = trace_workload(tmp_path / "r.npz", np.array([0, 1]).reshape(1, 1, 2, 1))
    cached = {"gating": {"name": "dynamic"}, "cache": {"name": "lru", "slots_per_layer": 1}}
    plain, _ = run(make_scenario(cluster=cluster, workload=workload))
    result, _ = run(make_scenario(cluster=cluster, workload=workload, policies=cached))
    copy = 1e-5 + 2 * 4 * 8 * 4 / 1e9  # 64 fp32 parameters
    work = 2 * 1 * 64 / 1e12  # one token through one expert
    assert result.time_breakdown_s["expert"] == pytest.approx(2 * work, rel=1e-12)
    assert result.time_breakdown_s["transfer"] == pytest.approx(2 * copy - work, rel=1e-12)
    assert result.latency_s.mean == pytest.approx(plain.latency_s.mean + 2 * copy - work)
    cache = result.cache
    assert (cache.hits, cache.misses, cache.evictions) == (0, 2, 1)
    assert cache.bytes_host_to_device == 2 * 256
    assert cache.stall_s == pytest.approx(2 * copy - work)


def test_without_a_copy_engine_each_miss_is_copied_before_its_expert_runs(tmp_path) -> None:
    # As test_copies_by_hand on a device whose compute stream copies (a CPU): no overlap, both
    # copies add to the step in full, the expert phase still holds only the compute.
    device = make_scenario().cluster.device
    host = device.links.host.model_copy(update={"overlaps_compute": False})
    device = device.model_copy(update={"links": device.links.model_copy(update={"host": host})})
    cluster = {"nodes": 1, "gpus_per_node": 1, "device": device.model_dump()}
    workload = trace_workload(tmp_path / "r.npz", np.array([0, 1]).reshape(1, 1, 2, 1))
    cached = {"gating": {"name": "dynamic"}, "cache": {"name": "lru", "slots_per_layer": 1}}
    plain, _ = run(make_scenario(cluster=cluster, workload=workload))
    result, records = run(
        make_scenario(cluster=cluster, workload=workload, policies=cached), trace_steps=1
    )
    copy = 1e-5 + 2 * 4 * 8 * 4 / 1e9
    work = 2 * 1 * 64 / 1e12
    assert result.time_breakdown_s["expert"] == pytest.approx(2 * work, rel=1e-12)
    assert result.time_breakdown_s["transfer"] == pytest.approx(2 * copy, rel=1e-12)
    assert result.latency_s.mean == pytest.approx(plain.latency_s.mean + 2 * copy, rel=1e-12)
    copies = records.spans.name == "copy_expert"
    starts = np.sort(records.spans.start_s[copies])
    assert starts[1] - starts[0] == pytest.approx(copy + work, rel=1e-9)  # copy, run, copy


def _scenario(cache, steps=12):
    model = dict(TINY_MODEL, num_experts=16, top_k=2, layers=4)
    work = {
        "phase": "decode",
        "batch_size": 16,
        "seq_len": 8,
        "steps": steps,
        "routing": {"source": "synthetic", "skew": 1.2, "locality": 0.5},
    }
    policies = {"gating": {"name": "dynamic"}, "cache": cache}
    return make_scenario(model=model, workload=work, policies=policies)


def _quick(cache, steps=12):
    return run(_scenario(cache, steps))[0]


def test_enough_slots_cold_miss_each_expert_once_and_warm_costs_nothing() -> None:
    none = _quick("none")
    cold = _quick({"name": "lru", "slots_per_layer": 8})  # 8 local experts per GPU
    warm = _quick({"name": "lru", "slots_per_layer": 8, "warm": True})
    ids = np.concatenate([c.expert_ids_NLTK for c in routing_chunks(_scenario("none"))])
    layer_expert = {(layer, int(e)) for layer in range(ids.shape[1]) for e in ids[:, layer].ravel()}
    assert cold.cache.misses == len(layer_expert)  # each expert lives on one GPU
    assert cold.cache.evictions == 0
    assert warm.cache.misses == 0 and warm.cache.bytes_host_to_device == 0
    assert warm.latency_s.mean == pytest.approx(none.latency_s.mean, rel=1e-12)
    assert warm.time_breakdown_s == pytest.approx(none.time_breakdown_s, rel=1e-12)
    assert cold.latency_s.mean > none.latency_s.mean


def test_without_prefetch_bytes_are_misses_times_expert_bytes() -> None:
    expert_bytes = 2 * 4 * 8 * 4
    for name in ("lru", "lfu", "fifo", "lifo", "random", "belady"):
        result = _quick({"name": name, "slots_per_layer": 2})
        assert result.cache.bytes_host_to_device == result.cache.misses * expert_bytes
        assert result.time_breakdown_s["transfer"] > 0


def test_belady_bounds_the_others_and_prefetch_hides_copies() -> None:
    misses = {
        name: _quick({"name": name, "slots_per_layer": 3}).cache.misses
        for name in ("lru", "lfu", "fifo", "lifo", "belady")
    }
    assert misses["belady"] == min(misses.values())
    plain = _quick({"name": "lru", "slots_per_layer": 3})
    oracle = _quick({"name": "lru", "slots_per_layer": 3, "prefetch": "oracle"})
    assert oracle.cache.misses < plain.cache.misses
    assert oracle.cache.stall_s < plain.cache.stall_s


def test_expert_memory_falls_linearly_with_slots() -> None:
    expert_bytes = 2 * 4 * 8 * 4
    memory = [
        max(_quick({"name": "lru", "slots_per_layer": s}, steps=1).memory.weights_bytes_per_device)
        for s in (1, 2, 3, 4)
    ]
    # 2 MoE layers: each slot fewer saves one expert per layer
    assert np.diff(memory).tolist() == [2 * expert_bytes] * 3


def test_the_papers_static_memory_savings() -> None:
    # Huang et al. §VI-C: MT decoder's 6 MoE layers buffered on 8 V100s, fp16: 10 slots per
    # GPU save 2.25 GB (GiB) of static memory; 1 slot saves 32.2 %, 1.47x less.
    base, _ = run(load_scenario(SCENARIOS / "paper-mt-decoder.yaml", ["workload.steps=1"]))
    static = base.memory.weights_bytes_per_device[0]
    for slots, saved_gib, ratio in ((10, 2.25, None), (1, None, 1.47)):
        cache = (
            f"policies.cache={{name: lifo, step_aware: true, slots_per_layer: {slots}, "
            "layers: decoder}"
        )
        result, _ = run(
            load_scenario(SCENARIOS / "paper-mt-decoder.yaml", ["workload.steps=1", cache])
        )
        buffered = result.memory.weights_bytes_per_device[0]
        if saved_gib:
            assert (static - buffered) / 2**30 == pytest.approx(saved_gib, abs=0.005)
        if ratio:
            assert static / buffered == pytest.approx(ratio, abs=0.005)
            assert 1 - buffered / static == pytest.approx(0.322, abs=0.001)


def test_buffering_the_decoder_leaves_the_encoder_run_alone() -> None:
    overrides = ["workload.steps=1", "workload.phase=prefill", "workload.batch_size=8"]
    plain, _ = run(load_scenario(SCENARIOS / "paper-mt-decoder.yaml", overrides))
    cache = "policies.cache={name: lru, slots_per_layer: 1, layers: decoder}"
    cached, _ = run(load_scenario(SCENARIOS / "paper-mt-decoder.yaml", [*overrides, cache]))
    assert cached.latency_s == plain.latency_s
    assert cached.cache.misses == 0
    assert cached.memory.weights_bytes_per_device[0] < plain.memory.weights_bytes_per_device[0]


def test_the_timeline_shows_each_copy_and_the_waiting_experts() -> None:
    scenario = _scenario({"name": "lru", "slots_per_layer": 2}, steps=3)
    result, records = run(scenario, trace_steps=3)
    spans = records.spans
    copies = spans.name == "copy_expert"
    assert copies.sum() == result.cache.misses
    assert set(spans.stream[copies]) == {"copy"}
    # each GPU's expert span ends no earlier than the copies it waited for in that layer
    for gpu in range(2):
        for step in range(3):
            for layer in range(2):
                mine = (spans.device == gpu) & (spans.step == step) & (spans.layer == layer)
                landed = (spans.start_s + spans.duration_s)[mine & copies]
                expert = mine & (spans.name == "expert")
                if landed.size and expert.any():
                    end = (spans.start_s + spans.duration_s)[expert][0]
                    assert end >= landed.max() - 1e-15
    compute = spans.stream == "compute"
    assert (spans.start_s + spans.duration_s)[compute & (spans.step == 0)].max() == pytest.approx(
        records.steps.start_s[1]
    )


def test_a_copy_that_lands_before_the_tokens_still_waits_for_the_dispatch(tmp_path) -> None:
    # 2 GPUs, a slow NVLink (dispatch 1 ms) and a fast host link: copies land long before
    # the tokens; experts still start after the dispatch, and cost what they cost uncached.
    device = make_scenario().cluster.device.model_dump()
    device["links"]["nvlink"]["bandwidth"] = 16e3  # 16 bytes in 1 ms
    device["links"]["host"].update(bandwidth=1e15, latency=0.0)
    cluster = {"nodes": 1, "gpus_per_node": 2, "device": device}
    workload = trace_workload(tmp_path / "r.npz", np.array([2, 0, 3, 0]).reshape(1, 1, 4, 1))
    plain, _ = run(make_scenario(cluster=cluster, workload=workload))
    cached, _ = run(
        make_scenario(
            cluster=cluster,
            workload=workload,
            policies={
                "gating": {"name": "dynamic"},
                "cache": {"name": "lru", "slots_per_layer": 1},
            },
        )
    )
    assert cached.time_breakdown_s["expert"] == pytest.approx(plain.time_breakdown_s["expert"])
    assert cached.time_breakdown_s["transfer"] == pytest.approx(0.0, abs=1e-15)
    assert cached.latency_s.mean == pytest.approx(plain.latency_s.mean)


@pytest.mark.parametrize("name", ["lru", "lfu", "lifo", "belady"])
def test_oracle_prefetch_never_adds_misses_and_loads_balance_evictions(name) -> None:
    plain = _quick({"name": name, "slots_per_layer": 3})
    oracle = _quick({"name": name, "slots_per_layer": 3, "prefetch": "oracle"})
    nxt = _quick({"name": name, "slots_per_layer": 3, "prefetch": "next-layer"})
    assert oracle.cache.misses <= plain.cache.misses
    for result in (plain, oracle, nxt):
        loads = result.cache.bytes_host_to_device / (2 * 4 * 8 * 4)
        # every load beyond the slots evicts: 2 GPUs x 2 buffered layers x 3 slots
        assert loads - result.cache.evictions <= 2 * 2 * 3
        assert loads - result.cache.evictions >= 0


def test_a_cache_on_a_stack_the_model_lacks_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no encoder"):
        _scenario({"name": "lru", "layers": "encoder"})
