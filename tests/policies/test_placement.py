"""Placement planners against hand-worked cases, EPLB round trips, and no peeking."""

import numpy as np
import pytest

from moesim.config import PLACEMENT
from moesim.errors import ConfigError
from moesim.policies import (
    PlacementPlan,
    balanced_slots,
    contiguous_plan,
    expert_counts,
    load_eplb,
    pearson,
    plan_placement,
    save_eplb,
)
from moesim.workload import routing_chunks
from tests.conftest import TINY_MODEL, make_scenario


def _plan(spec, load_HLE, gpus) -> PlacementPlan:
    return PLACEMENT.build(PLACEMENT.validate(spec)).plan(np.asarray(load_HLE, float), gpus)


def test_contiguous_and_round_robin() -> None:
    empty = np.zeros((0, 1, 6))
    assert _plan("contiguous", empty, 3).owner_LU.tolist() == [[0, 0, 1, 1, 2, 2]]
    assert _plan("round_robin", empty, 3).owner_LU.tolist() == [[0, 1, 2, 0, 1, 2]]
    # 5 experts on 2 GPUs: 3 and 2
    assert contiguous_plan(5, 2, 1).experts_per_gpu_LG.tolist() == [[3, 2]]
    assert balanced_slots(5, 2).tolist() == [3, 2]


def test_greedy_by_hand() -> None:
    # loads 10, 9, 2, 1 on 2 GPUs of 2 slots: 10 -> G0, 9 -> G1, 2 -> G1 (9 < 10), 1 -> G0
    plan = _plan("greedy", [[[10, 9, 2, 1]]], 2)
    assert plan.owner_LU.tolist() == [[0, 1, 1, 0]]
    # the mean over history steps is what counts: (0 + 20) / 2 = 10 beats 9
    assert _plan("greedy", [[[0, 9, 2, 1]], [[20, 9, 2, 1]]], 2).owner_LU.tolist() == [[0, 1, 1, 0]]


def test_learning_planners_need_history() -> None:
    with pytest.raises(ConfigError, match="history_steps"):
        _plan("greedy", np.zeros((0, 1, 4)), 2)


def test_anti_correlation_separates_a_planted_pair() -> None:
    rng = np.random.default_rng(0)
    steps = 200
    pair = rng.integers(1, 4, size=steps)  # experts 0 and 1 always fire together
    load = np.stack(
        [
            pair,
            pair,
            rng.integers(5, 8, size=steps),
            rng.integers(5, 8, size=steps),
            rng.integers(1, 4, size=steps),
            rng.integers(1, 4, size=steps),
        ],
        axis=1,
    )
    assert pearson(load.astype(float))[0, 1] == pytest.approx(1.0)
    plan = _plan("anti_correlation", load[:, None, :], 3)
    owner = plan.owner_LU[0]
    assert owner[0] != owner[1]
    assert plan.experts_per_gpu_LG.tolist() == [[2, 2, 2]]


def test_pearson_of_a_constant_expert_is_zero() -> None:
    corr = pearson(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]))
    assert corr == pytest.approx(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_replicated_gives_the_hot_expert_one_replica_per_gpu() -> None:
    # 5 experts + 3 redundant = 8 slots on 4 GPUs: the hot expert gets 4 replicas, one per GPU.
    plan = _plan({"name": "replicated", "redundant_experts": 3}, [[[100, 1, 1, 1, 1]]], 4)
    assert plan.logcnt_LE.tolist() == [[4, 1, 1, 1, 1]]
    hot_gpus = plan.owner_LU[0][plan.phy2log_LU[0] == 0]
    assert sorted(hot_gpus.tolist()) == [0, 1, 2, 3]
    assert plan.experts_per_gpu_LG.tolist() == [[2, 2, 2, 2]]
    # 8 tokens all to expert 0 split 2 per replica
    units = plan.to_units(np.zeros((1, 1, 8, 1), dtype=int))
    per_gpu = np.bincount(plan.owner_LU[0][units.ravel()], minlength=4)
    assert per_gpu.tolist() == [2, 2, 2, 2]


def test_replicated_needs_slots_that_split_evenly() -> None:
    with pytest.raises(ConfigError, match="do not split evenly over 4 GPUs"):
        _plan({"name": "replicated", "redundant_experts": 2}, [[[1, 1, 1, 1, 1]]], 4)


def test_to_units_and_log2phy_by_hand() -> None:
    # slots: [e1, e0, e1, e2] on GPUs [0, 0, 1, 1]
    plan = PlacementPlan(np.array([[1, 0, 1, 2]]), np.array([[0, 0, 1, 1]]), 2, 3)
    assert plan.logcnt_LE.tolist() == [[1, 2, 1]]
    assert plan.log2phy_LER.tolist() == [[[1, -1], [0, 2], [3, -1]]]
    ids = np.array([1, 1, 0, 2]).reshape(1, 1, 4, 1)
    # token t's copy of expert 1 is replica t % 2: tokens 0, 1 -> slots 0, 2
    assert plan.to_units(ids).ravel().tolist() == [0, 2, 1, 3]


def test_eplb_round_trip(tmp_path) -> None:
    plan = _plan({"name": "replicated", "redundant_experts": 3}, [[[9, 5, 1, 1, 7]]] * 2, 4)
    save_eplb(tmp_path / "p.npz", plan)
    back = load_eplb(tmp_path / "p.npz", gpus=4, num_experts=5, layers=1)
    assert np.array_equal(back.phy2log_LU, plan.phy2log_LU)
    assert np.array_equal(back.owner_LU, plan.owner_LU)
    stored = np.load(tmp_path / "p.npz")
    assert np.array_equal(stored["logcnt"], plan.logcnt_LE)
    with pytest.raises(ConfigError, match="over 3 GPUs"):
        load_eplb(tmp_path / "p.npz", gpus=3, num_experts=5, layers=1)
    round_robin = _plan("round_robin", np.zeros((0, 1, 4)), 2)  # owners [0, 1, 0, 1]
    save_eplb(tmp_path / "rr.npz", round_robin)
    back = load_eplb(tmp_path / "rr.npz", gpus=2, num_experts=4, layers=1)
    assert back.phy2log_LU.tolist() == [[0, 2, 1, 3]]  # reordered so slot u is on GPU u // 2


def _scenario(placement, locality=1.0, steps=6):
    model = dict(TINY_MODEL, num_experts=8, top_k=2, layers=4)
    return make_scenario(
        model=model,
        cluster={"nodes": 1, "gpus_per_node": 4, "device": make_scenario().cluster.device},
        workload={
            "phase": "prefill",
            "batch_size": 8,
            "seq_len": 16,
            "steps": steps,
            "routing": {"source": "synthetic", "skew": 1.5, "locality": locality},
        },
        policies={"gating": {"name": "dynamic"}, "placement": placement},
    )


def test_no_peeking_the_plan_comes_from_the_warmup_window_only() -> None:
    scenario = _scenario({"name": "greedy", "history_steps": 5}, locality=0.3)
    history = np.concatenate(
        [expert_counts(c.expert_ids_NLTK, 8) for c in routing_chunks(scenario, 0, 5)]
    )
    expected = _plan("greedy", history, 4)
    assert np.array_equal(plan_placement(scenario).owner_LU, expected.owner_LU)
    oracle = _scenario({"name": "greedy", "history_steps": 5, "oracle": True}, locality=0.3)
    measured = np.concatenate(
        [expert_counts(c.expert_ids_NLTK, 8) for c in routing_chunks(oracle, 5)]
    )
    assert np.array_equal(plan_placement(oracle).owner_LU, _plan("greedy", measured, 4).owner_LU)


@pytest.mark.parametrize(("start", "steps"), [(4, 5), (4, 100), (70, 3), (0, 130)])
def test_a_step_has_the_same_routing_in_every_window(start, steps) -> None:
    scenario = _scenario("contiguous", locality=0.5)
    whole = np.concatenate([c.expert_ids_NLTK for c in routing_chunks(scenario, 0, 140)])
    window = list(routing_chunks(scenario, start, steps))
    assert window[0].first_step == 0
    got = np.concatenate([c.expert_ids_NLTK for c in window])
    assert np.array_equal(whole[start : start + steps], got)


def test_bad_eplb_files_and_impossible_replication(tmp_path) -> None:
    np.savez(tmp_path / "f.npz", phy2log=np.array([[0.0, 1.7]]))
    with pytest.raises(ConfigError, match="integer"):
        load_eplb(tmp_path / "f.npz", gpus=2, num_experts=2, layers=1)
    np.savez(tmp_path / "e.npz", phy2log=np.zeros((1, 0), dtype=int))
    with pytest.raises(ConfigError, match="non-empty"):
        load_eplb(tmp_path / "e.npz", gpus=2, num_experts=2, layers=1)
    with pytest.raises(ConfigError, match="at most one copy"):
        _plan({"name": "replicated", "redundant_experts": 10}, [[[5, 1, 1]]], 4)


def test_a_deepseek_eplb_layout_loads_as_written(tmp_path) -> None:
    # EPLB's convention: slot u on GPU u // (slots / GPUs); expert 0 has replicas on both GPUs.
    np.savez(tmp_path / "eplb.npz", phy2log=np.array([[0, 1, 0, 2]]))
    plan = load_eplb(tmp_path / "eplb.npz", gpus=2, num_experts=3, layers=1)
    assert plan.owner_LU.tolist() == [[0, 0, 1, 1]]
    assert plan.logcnt_LE.tolist() == [[2, 1, 1]]
    assert plan.log2phy_LER.tolist() == [[[0, 2], [1, -1], [3, -1]]]
