"""The cost model with a model card's measured tables: grid points give the measured value,
between them the linear interpolation, a card that does not match gets the generic costs, and
a lone rank's all-to-all phase costs its table entry."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from moesim.api import run
from moesim.config import ModelSpec
from moesim.config.model_tables import ModelShapes, ModelTables
from moesim.hardware import DeviceCosts
from moesim.sim.layer_costs import attention_time, ffn_time, gate_time, lm_head_time
from tests.conftest import SIMPLE_PROFILE, SMALL_MOE, make_scenario, workload

MODEL = ModelSpec.model_validate(SMALL_MOE)
TOKENS = [1.0, 16.0, 64.0]


def _curve(axis: str, points: list[float], seconds: list[float]) -> dict[str, Any]:
    return {axis: points, "seconds": seconds}


def hand_tables(model: ModelSpec, name: str | None = None) -> dict[str, Any]:
    """Round numbers per operator: each ``a, b, c`` at 1, 16 and 64 tokens."""
    static = {"tokens": TOKENS, "capacity_factor": [1.0, 2.0], "seconds": [[1, 2, 4], [2, 4, 8]]}
    return {
        "model": name or model.name,
        "shapes": ModelShapes.of(model).model_dump(),
        "attention_decode": {
            "tokens": [1.0, 4.0],
            "context": [8.0, 32.0],
            "seconds": [[1e-4, 2e-4], [3e-4, 5e-4]],
        },
        "attention_prefill": {
            "sequences": [1.0, 2.0],
            "seq_len": [8.0, 16.0],
            "seconds": [[1e-3, 1.5e-3], [3e-3, 4e-3]],
        },
        "gate_dynamic": _curve("tokens", TOKENS, [1e-4, 4e-4, 1e-3]),
        "gate_static": {**static, "seconds": [[s * 1e-4 for s in r] for r in static["seconds"]]},
        "gate_einsum": {**static, "seconds": [[s * 1e-3 for s in r] for r in static["seconds"]]},
        "alltoall_dynamic": _curve("tokens", TOKENS, [1e-5, 2e-5, 3e-5]),
        "alltoall_static": _curve("tokens", TOKENS, [4e-5, 5e-5, 6e-5]),
        "expert": _curve("rows", [1.0, 8.0], [2e-4, 9e-4]),
        "ffn": _curve("tokens", TOKENS, [3e-4, 6e-4, 9e-4]),
        "lm_head": _curve("tokens", TOKENS, [5e-5, 2e-4, 8e-4]),
        "glue": _curve("tokens", TOKENS, [1e-6, 2e-6, 5e-6]),
        "expert_copy": 7e-4,
        "provenance": {"source": "calibrated", "ref": "test"},
    }


def _costs(tables: dict[str, Any] | None = None) -> DeviceCosts:
    profile = make_scenario().cluster.device
    if tables is not None:
        compute = profile.compute.model_copy(update={"models": [ModelTables(**tables)]})
        profile = profile.model_copy(update={"compute": compute})
    return DeviceCosts.from_profile(profile, "fp32")


COSTS = _costs(hand_tables(MODEL))


def test_a_grid_point_costs_its_measured_value():
    tokens = np.array([1, 16, 64])
    assert gate_time(MODEL, COSTS, tokens, None, False) == pytest.approx([1e-4, 4e-4, 1e-3])
    assert ffn_time(MODEL, COSTS, tokens, MODEL.d_ffn) == pytest.approx([3e-4, 6e-4, 9e-4])
    assert lm_head_time(MODEL, COSTS, tokens) == pytest.approx([5e-5, 2e-4, 8e-4])
    decode = attention_time(MODEL, COSTS, np.array([4]), 32.0, True)
    assert decode == pytest.approx([5e-4])
    # 2 prompts of 16 tokens attend over (16 + 1) / 2 positions on average
    prefill = attention_time(MODEL, COSTS, np.array([32]), 8.5, False)
    assert prefill == pytest.approx([4e-3])


def test_between_grid_points_the_cost_is_the_linear_interpolation():
    # 40 tokens: 16 + (40 - 16) / 48 of the way to 64
    assert gate_time(MODEL, COSTS, np.array([40]), None, False) == pytest.approx([7e-4])
    # decode at 2.5 sequences and 20 positions: halfway in both axes
    decode = attention_time(MODEL, COSTS, np.array([2.5]), 20.0, True)
    assert decode == pytest.approx([(1e-4 + 2e-4 + 3e-4 + 5e-4) / 4])
    # static gating: 16 tokens with capacity factor 1.5 (C = 1.5 x 16 x 2 / 4 = 12 slots)
    static = gate_time(MODEL, COSTS, np.array([16]), np.array([12]), False)
    assert static == pytest.approx([3e-4])


def test_beyond_the_grid_the_last_segment_continues_and_below_it_scales_down():
    # 112 tokens: 1e-3 + 48 x (6e-4 / 48)
    assert gate_time(MODEL, COSTS, np.array([112]), None, False) == pytest.approx([1.6e-3])
    # half a prompt of 16 tokens: the first segment continued, 3e-3 - 0.5 x 1e-3 (more than
    # half the time of a whole prompt, 1.5e-3)
    prefill = attention_time(MODEL, COSTS, np.array([8]), 8.5, False)
    assert prefill == pytest.approx([2.5e-3])


def test_zero_tokens_cost_nothing():
    assert gate_time(MODEL, COSTS, np.array([0]), None, False) == pytest.approx([0.0])
    assert attention_time(MODEL, COSTS, np.array([0]), 32.0, True) == pytest.approx([0.0])


@pytest.mark.parametrize(
    "other",
    [
        MODEL.model_copy(update={"name": "another-card"}),
        MODEL.model_copy(update={"d_model": 64}),
    ],
    ids=["name", "shapes"],
)
def test_a_card_that_does_not_match_gets_the_generic_costs(other):
    tokens = np.array([1, 16, 40])
    generic = _costs()
    assert gate_time(other, COSTS, tokens, None, False) == pytest.approx(
        gate_time(other, generic, tokens, None, False)
    )
    assert attention_time(other, COSTS, tokens, 32.0, True) == pytest.approx(
        attention_time(other, generic, tokens, 32.0, True)
    )


def _with_tables(tables: dict[str, Any]) -> dict[str, Any]:
    profile = copy.deepcopy(SIMPLE_PROFILE)
    profile["compute"]["models"] = [tables]
    return profile


def _lone_rank(policies: dict[str, Any], tables: dict[str, Any] | None) -> Any:
    profile = copy.deepcopy(SIMPLE_PROFILE) if tables is None else _with_tables(tables)
    result, _ = run(
        make_scenario(
            model=SMALL_MOE,
            cluster={"nodes": 1, "gpus_per_node": 1, "device": profile},
            workload=workload(batch_size=16, seq_len=8),
            policies=policies,
        )
    )
    return result


def test_a_lone_rank_all_to_all_costs_its_table_entry_and_glue():
    # 16 tokens on the one rank, 2 MoE layers: (2e-5 + 2e-6) each
    result = _lone_rank({"gating": {"name": "dynamic"}}, hand_tables(MODEL))
    assert result.time_breakdown_s["alltoall"] == pytest.approx(2 * (2e-5 + 2e-6))
    static = {"gating": {"name": "static", "capacity_factor": 1.0}}
    result = _lone_rank(static, hand_tables(MODEL))
    assert result.time_breakdown_s["alltoall"] == pytest.approx(2 * (5e-5 + 2e-6))


def test_a_lone_rank_all_to_all_without_tables_costs_a_launch_each():
    profile = copy.deepcopy(SIMPLE_PROFILE)
    profile["compute"]["launch_overhead"] = 1e-6
    result, _ = run(
        make_scenario(
            model=SMALL_MOE,
            cluster={"nodes": 1, "gpus_per_node": 1, "device": profile},
            policies={"gating": {"name": "dynamic"}},
        )
    )
    # count exchange, dispatch and combine in each of 2 MoE layers
    assert result.time_breakdown_s["alltoall"] == pytest.approx(2 * 3 * 1e-6)


def test_a_buffered_expert_copy_without_a_copy_engine_costs_its_measured_time():
    tables = hand_tables(MODEL)
    profile = _with_tables(tables)
    profile["links"]["host"]["overlaps_compute"] = False
    policies = {"gating": {"name": "dynamic"}, "cache": {"name": "lru", "slots_per_layer": 1}}
    result, _ = run(
        make_scenario(
            model=SMALL_MOE,
            cluster={"nodes": 1, "gpus_per_node": 1, "device": profile},
            workload=workload(batch_size=1, seq_len=8),
            policies=policies,
        )
    )
    # one token to 2 of 4 experts in each of 2 layers, one slot per layer: every expert a miss
    # but the first layer's first, which the cold cache may hold; copies block compute
    misses = result.cache.misses
    assert misses >= 3
    assert result.time_breakdown_s["transfer"] == pytest.approx(misses * 7e-4)
    assert result.time_breakdown_s["expert"] == pytest.approx(2 * 2 * 2e-4)
