"""Topology graph and cost functions against hand-computed values."""

import numpy as np
import pytest

from moesim.config import ClusterSpec, HardwareProfile
from moesim.hardware import KINDS, DeviceCosts, build_topology, transfer_time
from tests.conftest import SIMPLE_PROFILE


def _cluster(nodes: int, per_node: int) -> ClusterSpec:
    return ClusterSpec(nodes=nodes, gpus_per_node=per_node, device=SIMPLE_PROFILE)


def test_pairs_inside_a_node_use_nvlink_and_across_nodes_the_network() -> None:
    topology = build_topology(_cluster(2, 2))
    nv, net = KINDS.index("nvlink"), KINDS.index("network")
    assert topology.kind_GG.tolist() == [
        [0, nv, net, net],
        [nv, 0, net, net],
        [net, net, 0, nv],
        [net, net, nv, 0],
    ]
    # switched paths: two hops of half the link latency each
    assert topology.latency_GG[0, 1] == pytest.approx(1e-6)
    assert topology.latency_GG[0, 3] == pytest.approx(1e-5)
    assert topology.graph.number_of_nodes() == 4 + 2 + 2 + 1  # GPUs, switches, hosts, fabric
    pcie = [e for e in topology.graph.edges(data=True) if e[2]["kind"] == "pcie"]
    assert len(pcie) == 4


@pytest.mark.parametrize(("nodes", "per_node"), [(1, 4), (3, 2), (2, 5)])
def test_closed_form_kinds_and_latencies_equal_shortest_paths_over_the_graph(
    nodes, per_node
) -> None:
    import networkx as nx

    topology = build_topology(_cluster(nodes, per_node))
    graph = topology.graph
    for k, kind in enumerate(KINDS[1:], start=1):
        view = nx.subgraph_view(
            graph, filter_edge=lambda a, b, kind=kind: graph.edges[a, b]["kind"] == kind
        )
        for g in range(topology.gpus):
            lengths = nx.single_source_dijkstra_path_length(view, ("gpu", g), weight="latency")
            for h in range(topology.gpus):
                if topology.kind_GG[g, h] == k:
                    assert topology.latency_GG[g, h] == pytest.approx(lengths[("gpu", h)])
    same_node = (
        np.arange(topology.gpus)[:, None] // per_node == np.arange(topology.gpus) // per_node
    )
    expected = np.where(same_node, KINDS.index("nvlink"), KINDS.index("network"))
    np.fill_diagonal(expected, 0)
    assert np.array_equal(topology.kind_GG, expected)


def test_single_gpu_has_no_peers() -> None:
    topology = build_topology(_cluster(1, 1))
    assert topology.kind_GG.tolist() == [[0]]
    assert set(topology.links) == {"nvlink", "network"}


def test_roofline_takes_the_slower_of_compute_and_memory() -> None:
    profile = HardwareProfile.model_validate(SIMPLE_PROFILE)
    costs = DeviceCosts(flops_per_s=1e12, hbm_bytes_per_s=1e11, launch_overhead_s=2e-6)
    # 1e9 FLOPs = 1 ms compute; 1e7 bytes = 0.1 ms memory -> compute-bound
    assert costs.op_time(1e9, 1e7) == pytest.approx(2e-6 + 1e-3)
    # memory-bound, three launches
    assert costs.op_time(1e6, 1e9, 3) == pytest.approx(6e-6 + 1e-2)
    from_profile = DeviceCosts.from_profile(profile, "fp16")
    assert from_profile.flops_per_s == 2e12


def test_transfer_time_is_latency_plus_bytes_over_bandwidth_and_free_when_empty() -> None:
    link = HardwareProfile.model_validate(SIMPLE_PROFILE).links.nvlink
    times = transfer_time(link, np.array([0.0, 1e6]))
    assert times.tolist() == pytest.approx([0.0, 1e-6 + 1e-3])


def test_link_kind_follows_node_membership_whatever_the_latencies() -> None:
    # A very fast PCIe or network must not turn an NVLink pair into something else.
    profile = HardwareProfile.model_validate(SIMPLE_PROFILE).model_dump()
    profile["links"]["host"]["latency"] = 1e-9
    profile["links"]["network"]["latency"] = 1e-9
    topology = build_topology(ClusterSpec(nodes=2, gpus_per_node=2, device=profile))
    nv, net = KINDS.index("nvlink"), KINDS.index("network")
    assert topology.kind_GG[0, 1] == nv and topology.kind_GG[0, 2] == net
    assert topology.latency_GG[0, 1] == pytest.approx(1e-6)  # over NVLink, not PCIe
    assert topology.latency_GG[0, 2] == pytest.approx(1e-9)
