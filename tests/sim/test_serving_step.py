"""A serving step costs what the fixed-batch model says for the same tokens and contexts."""

import numpy as np
import pytest

from moesim.api import run
from moesim.config import GATING
from moesim.hardware import DeviceCosts, build_topology
from moesim.policies import plan_placement
from moesim.sim.serving_step import step_shape, time_step
from tests.conftest import SIMPLE_PROFILE, TINY_MODEL, make_scenario, workload

GATINGS = [{"name": "dynamic"}, {"name": "static", "capacity_factor": 1.0}]


def _fixed(phase: str, seq_len: int, gating: dict):
    """A fixed batch of one sequence on one GPU, which holds every expert."""
    return make_scenario(
        cluster={"nodes": 1, "gpus_per_node": 1, "device": SIMPLE_PROFILE},
        workload=workload(phase=phase, batch_size=1, seq_len=seq_len, steps=2),
        policies={"gating": gating},
    )


def _serving_latency(scenario, new, context, prefill) -> float:
    costs = DeviceCosts.from_profile(scenario.cluster.device, scenario.model.dtype)
    plan = plan_placement(scenario)
    shape = step_shape(
        np.zeros(1, dtype=np.int64), [new], [context], [prefill], [True], scenario.cluster.gpus
    )
    layers = scenario.model.moe_layers(scenario.stack())
    # one GPU holds every expert: which two a token picks does not change the time
    ids = np.tile(np.arange(scenario.model.top_k), (1, layers, new, 1))
    gating = GATING.build(scenario.policies.gating)
    timing = time_step(scenario, costs, build_topology(scenario.cluster), plan, gating, shape, ids)
    return float(timing.latency_N[0])


@pytest.mark.parametrize("gating", GATINGS, ids=["dynamic", "static"])
@pytest.mark.parametrize("seq_len", [1, 37, 512])
def test_a_lone_decode_costs_a_decode_batch_of_one(gating, seq_len) -> None:
    scenario = _fixed("decode", seq_len, gating)
    fixed, _ = run(scenario)
    # a decode attends over its context and itself: seq_len positions after seq_len - 1
    assert _serving_latency(scenario, 1, seq_len - 1, False) == pytest.approx(fixed.latency_s.p50)


@pytest.mark.parametrize("gating", GATINGS, ids=["dynamic", "static"])
@pytest.mark.parametrize("seq_len", [1, 16, 300])
def test_a_lone_prompt_costs_a_prefill_batch_of_one(gating, seq_len) -> None:
    scenario = _fixed("prefill", seq_len, gating)
    fixed, _ = run(scenario)
    assert _serving_latency(scenario, seq_len, 0, True) == pytest.approx(fixed.latency_s.p50)


def test_step_shape_splits_tokens_and_contexts_per_gpu() -> None:
    # GPU 0: a 4-token chunk after 10 (positions 11..14, mean 12.5) and a decode at context 7;
    # GPU 1: two decodes at contexts 3 and 5 (positions 4 and 6, mean 5)
    shape = step_shape(
        np.array([0, 0, 1, 1]),
        [4, 1, 1, 1],
        [10, 7, 3, 5],
        [True, False, False, False],
        [False, True, True, True],
        gpus=2,
    )
    assert shape.prefill_G.tolist() == [4, 0]
    assert shape.prefill_context_G.tolist() == [12.5, 0.0]
    assert shape.decode_G.tolist() == [1, 2]
    assert shape.decode_context_G.tolist() == [8.0, 5.0]
    assert shape.logits_G.tolist() == [1, 2]
    assert shape.source_T.tolist() == [0] * 5 + [1] * 2


@pytest.mark.parametrize(
    ("gating", "alltoall"),
    [(GATINGS[0], "direct"), (GATINGS[1], "direct"), (GATINGS[0], "hierarchical")],
    ids=["dynamic", "static", "hierarchical"],
)
def test_a_step_costs_the_same_from_counts_as_from_its_tokens(gating, alltoall) -> None:
    # 2 nodes of 2 GPUs, 8 experts: tokens cross GPUs and nodes
    scenario = make_scenario(
        model={**TINY_MODEL, "num_experts": 8, "top_k": 2, "moe_every": 1},
        cluster={"nodes": 2, "gpus_per_node": 2, "device": SIMPLE_PROFILE},
        policies={"gating": gating, "alltoall": alltoall},
    )
    model, gpus = scenario.model, scenario.cluster.gpus
    layers = model.moe_layers(scenario.stack())
    costs = DeviceCosts.from_profile(scenario.cluster.device, model.dtype)
    plan = plan_placement(scenario)
    gpu_R = np.array([0, 0, 1, 2, 2, 2, 3])
    shape = step_shape(
        gpu_R, [5, 1, 1, 1, 1, 1, 1], [0, 3, 4, 5, 6, 7, 8], [True] + [False] * 6, [True] * 7, gpus
    )
    rng = np.random.default_rng(2)
    ids = np.argsort(rng.random((3, layers, int(shape.tokens_G.sum()), model.num_experts)))
    ids = ids[..., : model.top_k]
    cell = np.arange(3 * layers)[:, None, None] * gpus + shape.source_T[None, :, None]
    keys = (cell.reshape(3, layers, -1, 1) * model.num_experts + ids).ravel()
    counts = np.bincount(keys, minlength=3 * layers * gpus * model.num_experts)
    counts = counts.reshape(3, layers, gpus, model.num_experts)
    topology, gate = build_topology(scenario.cluster), GATING.build(scenario.policies.gating)
    tokens = time_step(scenario, costs, topology, plan, gate, shape, ids)
    counted = time_step(scenario, costs, topology, plan, gate, shape, counts_NLGE=counts)
    assert counted.latency_N.tolist() == pytest.approx(tokens.latency_N.tolist(), rel=1e-12)
    assert np.allclose(counted.breakdown_NP, tokens.breakdown_NP, rtol=1e-12, atol=0)
    assert np.array_equal(counted.tokens_NLG, tokens.tokens_NLG)
