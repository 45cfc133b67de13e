"""Dispatch rows per GPU and link kind against a pair-by-pair count of the assignments, and
the all-to-all time against each GPU's own time; hierarchical dispatch by hand."""

import copy

import numpy as np
import pytest

from moesim.api import run
from moesim.config import ClusterSpec
from moesim.hardware import KINDS, build_topology, port_time_is_monotone
from moesim.policies import PlacementPlan, contiguous_plan
from moesim.sim.traffic import alltoall_time, routed_tokens, via_domains
from tests.conftest import SIMPLE_PROFILE, TINY_MODEL, make_scenario, workload


def _by_pairs(units_NLTK, source_T, plan, gpus_per_node):
    """Egress and ingress by kind from a loop over every assignment."""
    n, layers, tokens, top_k = units_NLTK.shape
    egress = np.zeros((n, layers, plan.gpus, len(KINDS)), dtype=np.int64)
    ingress = np.zeros_like(egress)
    for step in range(n):
        for layer in range(layers):
            for t in range(tokens):
                for k in range(top_k):
                    g = int(source_T[t])
                    h = int(plan.owner_LU[layer, units_NLTK[step, layer, t, k]])
                    if g == h:
                        kind = KINDS.index("local")
                    elif g // gpus_per_node == h // gpus_per_node:
                        kind = KINDS.index("nvlink")
                    else:
                        kind = KINDS.index("network")
                    egress[step, layer, g, kind] += 1
                    ingress[step, layer, h, kind] += 1
    return egress, ingress


@pytest.mark.parametrize(("nodes", "per_node"), [(1, 4), (2, 2), (3, 2)])
@pytest.mark.parametrize("blocked", [True, False])
def test_routed_rows_by_kind_equal_a_count_pair_by_pair(nodes, per_node, blocked) -> None:
    gpus, experts, layers = nodes * per_node, 12, 3
    rng = np.random.default_rng(7)
    if blocked:
        plan = contiguous_plan(experts, gpus, layers)
    else:  # a shuffled owner per layer: slots of one GPU are not contiguous
        owner = np.stack([rng.permutation(np.arange(experts) % gpus) for _ in range(layers)])
        plan = PlacementPlan(np.tile(np.arange(experts), (layers, 1)), owner, gpus, experts)
    assert plan.blocked is blocked
    tokens, top_k = 10, 2
    units = rng.integers(0, experts, size=(4, layers, tokens, top_k)).astype(np.int16)
    source_T = np.repeat(np.arange(gpus), np.diff(np.linspace(0, tokens, gpus + 1).astype(int)))
    received = np.zeros((4, layers, gpus), dtype=np.int64)
    for step, layer in np.ndindex(4, layers):
        np.add.at(received[step, layer], plan.owner_LU[layer, units[step, layer].ravel()], 1)
    topology = build_topology(
        ClusterSpec(nodes=nodes, gpus_per_node=per_node, device=SIMPLE_PROFILE)
    )
    egress, ingress = routed_tokens(units, source_T, received, plan, topology)
    want_egress, want_ingress = _by_pairs(units, source_T, plan, per_node)
    assert np.array_equal(np.moveaxis(egress, 0, -1), want_egress)  # kinds first
    assert np.array_equal(np.moveaxis(ingress, 0, -1), want_ingress)


@pytest.mark.parametrize(
    "seconds",
    [[1e-5, 2e-5, 8e-5], [1e-5, 4e-5, 3e-5]],  # a monotone curve, and one that dips
    ids=["monotone", "dips"],
)
def test_alltoall_time_is_the_slowest_gpu_on_any_curve(seconds) -> None:
    profile = copy.deepcopy(SIMPLE_PROFILE)
    curve = {"bytes": [1e3, 1e4, 1e5], "seconds": seconds}
    profile["links"]["nvlink"]["alltoall"] = {4: curve}
    topology = build_topology(ClusterSpec(nodes=1, gpus_per_node=4, device=profile))
    link = topology.links["nvlink"]
    assert port_time_is_monotone(link, 4) is (seconds == sorted(seconds))
    rng = np.random.default_rng(3)
    egress = rng.integers(0, 3, size=(len(KINDS), 5, 2, 4)) * rng.choice(
        [1e2, 1e3, 5e3], (1, 5, 2, 4)
    )
    egress[[KINDS.index("local"), KINDS.index("network")]] = 0  # one node: NVLink only
    ingress = egress[..., ::-1].copy()
    got = alltoall_time(egress, ingress, topology, launch_overhead_s=1e-6, row_bytes=10.0)
    # by hand: every GPU's own time on the curve (log-log interpolation), then the slowest
    nv = KINDS.index("nvlink")
    port = 10.0 * np.maximum(egress[nv], ingress[nv])
    logs = np.interp(np.log(np.maximum(port, 1e3)), np.log(curve["bytes"]), np.log(seconds))
    per_gpu = np.where(port > 0, np.exp(logs), 0.0)
    assert np.allclose(got, per_gpu.max(axis=-1), rtol=1e-12, atol=0)


def test_hierarchical_dispatch_crosses_the_network_once_per_token_and_domain() -> None:
    topology = build_topology(ClusterSpec(nodes=2, gpus_per_node=2, device=SIMPLE_PROFILE))
    # 4 GPUs of 10 tokens, top-2: each sends 8 rows into its own domain, 12 into the other
    rows_NLGD = np.array([[8, 12], [8, 12], [12, 8], [12, 8]]).reshape(1, 1, 4, 2)
    # direct: 12 rows over the network each way, 4 over NVLink and 4 local (by hand)
    direct = np.zeros((3, 1, 1, 4))
    direct[0], direct[1], direct[2] = 4, 4, 12
    egress, ingress = via_domains(direct, direct, rows_NLGD, np.full(4, 10), 2, topology)
    # a token lands in the other domain with chance 1 - (1 - 12/20)^2 = 0.84: 8.4 rows
    np.testing.assert_allclose(egress[2, 0, 0], [8.4] * 4)
    # the domain's two GPUs share the 2 x 8.4 rows relayed in
    np.testing.assert_allclose(ingress[2, 0, 0], [8.4] * 4)
    # half of the 2 x 12 assignments relayed in need a forward to the GPU next door
    np.testing.assert_allclose(egress[1, 0, 0], [4 + 6] * 4)
    np.testing.assert_allclose(ingress[1, 0, 0], [4 + 6] * 4)
    np.testing.assert_array_equal(egress[0], direct[0])


def test_hierarchical_dispatch_in_a_run_moves_network_bytes_to_nvlink() -> None:
    results = {}
    for alltoall in ("direct", "hierarchical"):
        scenario = make_scenario(
            model={**TINY_MODEL, "moe_every": 1, "top_k": 2},
            cluster={"nodes": 2, "gpus_per_node": 2, "device": SIMPLE_PROFILE},
            workload=workload(batch_size=64),
            policies={"gating": {"name": "dynamic"}, "alltoall": alltoall},
        )
        results[alltoall] = run(scenario)[0]
    direct, via = results["direct"], results["hierarchical"]
    assert via.tokens == direct.tokens
    assert via.alltoall_bytes_by_kind["network"] < direct.alltoall_bytes_by_kind["network"]
    assert via.alltoall_bytes_by_kind["nvlink"] > direct.alltoall_bytes_by_kind["nvlink"]
