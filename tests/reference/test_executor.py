"""The reference executor's accounting equals the simulator's: same policy code, same routing."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.metrics import Result
from moesim.reference import UnsupportedScenarioError, execute, make_workplan
from moesim.reference.workplan import check_layout
from moesim.sim import simulate
from tests.conftest import SIMPLE_PROFILE, SMALL_MOE, make_scenario, workload

MODEL = SMALL_MOE
PROFILE = {**SIMPLE_PROFILE, "memory": {**SIMPLE_PROFILE["memory"], "capacity": "64GB"}}
SKEWED = {"source": "synthetic", "distribution": "zipf", "skew": 1.2, "locality": 0.5}


def _scenario(gpus: int = 1, **policies):
    return make_scenario(
        model=MODEL,
        cluster={"nodes": 1, "gpus_per_node": gpus, "device": PROFILE},
        workload=workload(batch_size=16, seq_len=8, steps=6, routing=SKEWED),
        policies={"gating": {"name": "dynamic"}, **policies},
    )


def _both(scenario):
    measured = execute(scenario, warmup=1)
    return Result.from_records(simulate(scenario)), Result.from_records(measured), measured


def _assert_same_accounting(predicted: Result, measured: Result) -> None:
    assert measured.tokens == predicted.tokens
    assert measured.alltoall_bytes_by_kind == predicted.alltoall_bytes_by_kind
    if predicted.load_imbalance is None:  # no expert work at all: no imbalance on either side
        assert measured.load_imbalance is None
    else:
        assert measured.load_imbalance == pytest.approx(predicted.load_imbalance, rel=1e-12)
    assert measured.placement.gpu_tokens_by_layer == predicted.placement.gpu_tokens_by_layer
    assert measured.memory.kv_cache_bytes_per_device == predicted.memory.kv_cache_bytes_per_device


@pytest.mark.parametrize(
    "gating",
    [
        {"name": "dynamic"},
        {"name": "static", "capacity_factor": 1.0, "min_capacity": 0},
        {"name": "static", "capacity_factor": 1.5, "dispatch": "index"},
    ],
)
def test_one_rank_accounting_equals_the_simulators(gating):
    predicted, measured, records = _both(_scenario(gating=gating))
    _assert_same_accounting(predicted, measured)
    assert measured.executor == "reference" and measured.steps == 6
    if gating["name"] == "static" and gating["capacity_factor"] == 1.0:
        assert measured.tokens.dropped > 0 and measured.tokens.padded > 0
    # a step's breakdown sums to its latency, as the simulator's does
    np.testing.assert_allclose(records.steps.breakdown_NP.sum(axis=1), records.steps.latency_s)
    assert (records.steps.latency_s > 0).all()


def test_buffered_one_rank_hits_and_misses_equal_the_simulators():
    cache = {"name": "lifo", "slots_per_layer": 3, "step_aware": True}
    predicted, measured, _ = _both(_scenario(cache=cache))
    _assert_same_accounting(predicted, measured)
    assert (measured.cache.hits, measured.cache.misses) == (
        predicted.cache.hits,
        predicted.cache.misses,
    )
    assert measured.cache.misses > 0 and measured.cache.hits > 0
    assert measured.cache.bytes_host_to_device == predicted.cache.bytes_host_to_device
    assert measured.time_breakdown_s["transfer"] > 0


def test_two_gloo_ranks_with_greedy_placement_and_static_gating_match_the_simulator():
    """Two processes exchange real rows over gloo; everything countable matches."""
    scenario = _scenario(
        2,
        gating={"name": "static", "capacity_factor": 1.0, "min_capacity": 0},
        placement={"name": "greedy", "history_steps": 20},
    )
    predicted, measured, _ = _both(scenario)
    _assert_same_accounting(predicted, measured)
    assert measured.gpus == 2 and measured.alltoall_bytes_by_kind["nvlink"] > 0
    assert measured.memory.weights_bytes_per_device[0] > 0


def test_encoder_decoder_models_are_refused_with_the_field_named():
    scenario = make_scenario(
        model={
            **MODEL,
            "architecture": "encoder-decoder",
            "encoder_layers": 2,
            "decoder_layers": 2,
            "layers": 4,
        },
    )
    with pytest.raises(UnsupportedScenarioError, match=r"model\.architecture"):
        make_workplan(scenario)


def test_a_model_too_large_for_this_machine_is_refused_before_allocating():
    huge = {**MODEL, "d_model": 65536, "d_ffn": 262144, "heads": 64}
    with pytest.raises(
        UnsupportedScenarioError, match="GiB, more than half of this machine's memory"
    ):
        make_workplan(
            _scenario().model_copy(update={"model": _scenario().model.model_copy(update=huge)})
        )


def test_prefill_needs_whole_sequences_per_rank():
    scenario = make_scenario(
        model=MODEL,
        cluster={"nodes": 1, "gpus_per_node": 2, "device": PROFILE},
        workload=workload(phase="prefill", batch_size=3, seq_len=4),
    )
    with pytest.raises(UnsupportedScenarioError, match="whole sequences"):
        make_workplan(scenario)


def test_cuda_is_refused_on_a_machine_without_one():
    with pytest.raises(MoesimError, match="cuda"):
        execute(_scenario(), device="cuda:0")


def test_a_capacity_of_zero_drops_everything_on_both_sides():
    gating = {"name": "static", "capacity_factor": 0.1, "formula": "tutel"}  # C = 0
    predicted, measured, _ = _both(_scenario(gating=gating))
    _assert_same_accounting(predicted, measured)
    assert measured.tokens.processed == 0 and measured.tokens.dropped == measured.tokens.routed


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cluster": {"parallel": {"attention_tp": 2}}}, "cluster.parallel"),
        ({"policies": {"overlap": {"name": "two_batch"}}}, "policies.overlap"),
        ({"policies": {"expert_kernel": "grouped"}}, "policies.expert_kernel"),
        ({"workload": {"mtp": {"tokens": 1}}}, "workload.mtp"),
    ],
)
def test_layouts_the_executor_does_not_run_are_refused_in_one_line(changes, field) -> None:
    base = make_scenario(model={**SMALL_MOE, "heads": 2})
    data = base.model_dump()
    for section, values in changes.items():
        data[section] = {**data[section], **values}
    with pytest.raises(UnsupportedScenarioError, match=field):
        check_layout(type(base).model_validate(data))
