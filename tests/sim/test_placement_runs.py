"""Placement in whole runs: balancing the load, exact balance, replica memory, traffic by kind."""

import numpy as np
import pytest

from moesim.api import run
from tests.conftest import TINY_MODEL, make_scenario


def _run(placement, routing, experts=8, top_k=2, gpus=4, nodes=1, steps=8, batch=16, seq=16):
    model = dict(TINY_MODEL, num_experts=experts, top_k=top_k, layers=4)
    return run(
        make_scenario(
            model=model,
            cluster={
                "nodes": nodes,
                "gpus_per_node": gpus,
                "device": make_scenario().cluster.device,
            },
            workload={
                "phase": "prefill",
                "batch_size": batch,
                "seq_len": seq,
                "steps": steps,
                "routing": routing,
            },
            policies={"gating": {"name": "dynamic"}, "placement": placement},
        )
    )[0]


@pytest.mark.parametrize("skew", [0.8, 1.5, 2.5])
def test_greedy_is_never_less_balanced_than_contiguous_on_stable_skew(skew) -> None:
    routing = {"source": "synthetic", "skew": skew, "locality": 1.0}
    contiguous = _run({"name": "contiguous", "history_steps": 20}, routing)
    greedy = _run({"name": "greedy", "history_steps": 20}, routing)
    assert greedy.load_imbalance <= contiguous.load_imbalance + 1e-9
    assert greedy.placement.avg_max_load <= contiguous.placement.avg_max_load + 1e-9
    assert greedy.tokens == contiguous.tokens  # the same measured routing


def test_greedy_balances_an_exactly_balanceable_load(tmp_path) -> None:
    # Every step: expert loads 3, 2, 2, 1 (8 tokens, top-1) on 2 GPUs.
    # contiguous: {0, 1} = 5 vs {2, 3} = 3; greedy: {0, 3} = 4 and {1, 2} = 4.
    ids = np.tile(np.array([0, 0, 0, 1, 1, 2, 2, 3]), 4).reshape(4, 1, 8, 1)
    path = tmp_path / "r.npz"
    np.savez(path, expert_ids=np.repeat(ids, 2, axis=1))  # 2 MoE layers
    routing = {"source": "trace", "path": str(path)}
    kwargs = {"experts": 4, "top_k": 1, "gpus": 2, "steps": 2, "batch": 8, "seq": 1}
    contiguous = _run({"name": "contiguous", "history_steps": 2}, routing, **kwargs)
    greedy = _run({"name": "greedy", "history_steps": 2}, routing, **kwargs)
    assert contiguous.load_imbalance == pytest.approx(5 / 4)
    assert contiguous.placement.max_load == pytest.approx(5 / 8)
    assert greedy.load_imbalance == 1.0
    assert greedy.placement.max_load == 0.5 and greedy.placement.avg_max_load == 0.5
    assert greedy.placement.gpu_tokens_by_layer == [[4.0, 4.0], [4.0, 4.0]]
    assert greedy.placement.imbalance_by_layer == [1.0, 1.0]


def test_replicas_cost_memory_and_split_the_hot_expert() -> None:
    routing = {"source": "synthetic", "skew": 3.0, "locality": 1.0}
    plain = _run({"name": "greedy", "history_steps": 10}, routing)
    replicated = _run({"name": "replicated", "history_steps": 10, "redundant_experts": 4}, routing)
    # 4 extra slots on 4 GPUs: one more expert of 2 * 4 * 8 fp32 params per GPU per MoE layer
    extra = 2 * (2 * 4 * 8) * 4.0
    assert np.allclose(
        np.subtract(
            replicated.memory.weights_bytes_per_device, plain.memory.weights_bytes_per_device
        ),
        extra,
    )
    assert replicated.load_imbalance < plain.load_imbalance


def test_alltoall_bytes_split_by_link_kind() -> None:
    routing = {"source": "synthetic", "skew": 0.0}
    one_node = _run("contiguous", routing, gpus=4)
    two_nodes = _run("contiguous", routing, gpus=2, nodes=2)
    assert one_node.alltoall_bytes_by_kind["network"] == 0.0
    assert one_node.alltoall_bytes_by_kind["nvlink"] == one_node.alltoall_bytes > 0
    assert two_nodes.alltoall_bytes_by_kind["network"] > two_nodes.alltoall_bytes_by_kind["nvlink"]
    assert sum(two_nodes.alltoall_bytes_by_kind.values()) == pytest.approx(two_nodes.alltoall_bytes)
