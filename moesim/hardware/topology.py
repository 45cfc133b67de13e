"""The cluster as a networkx graph, and the per-pair link kinds the collectives use.

Nodes: ``("gpu", i)``, ``("nvswitch", n)`` per node, ``("host", n)`` per node (CPU memory,
behind PCIe) and one ``("fabric",)`` that joins the nodes' NICs. Edges carry ``kind``
(``nvlink`` | ``pcie`` | ``network``), ``bandwidth`` (per direction, bytes/s) and ``latency``
(seconds, half the link's on each hop of a switched path). GPUs of one node talk over NVLink,
of different nodes over the network, whatever the latencies; a pair's latency is that of its
path over links of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from moesim.config import LINK_KINDS, ClusterSpec, LinkSpec

__all__ = ["KINDS", "Topology", "build_topology"]

KINDS = LINK_KINDS


@dataclass(frozen=True)
class Topology:
    """The graph and what the simulator reads from it, as arrays over GPUs.

    ``kind_GG[g, h]``: index into ``KINDS`` of the path from ``g`` to ``h`` (0 for ``g == h``);
    ``latency_GG``: path latency in seconds; ``links``: the LinkSpec of each kind used.
    """

    graph: nx.Graph
    kind_GG: np.ndarray
    latency_GG: np.ndarray
    links: dict[str, LinkSpec]

    @property
    def gpus(self) -> int:
        return self.kind_GG.shape[0]


def _add_link(graph: nx.Graph, a: tuple, b: tuple, kind: str, link: LinkSpec, hops: int) -> None:
    graph.add_edge(a, b, kind=kind, bandwidth=link.bandwidth, latency=link.latency / hops)


def build_topology(cluster: ClusterSpec) -> Topology:
    """Graph and pair arrays for ``cluster`` (NVLink through a switch inside a node)."""
    links = cluster.device.links
    graph = nx.Graph()
    gpus = cluster.gpus
    for gpu in range(gpus):
        node = gpu // cluster.gpus_per_node
        graph.add_node(("gpu", gpu), node=node)
        _add_link(graph, ("gpu", gpu), ("host", node), "pcie", links.host, 1)
        if links.nvlink is not None and cluster.gpus_per_node > 1:
            _add_link(graph, ("gpu", gpu), ("nvswitch", node), "nvlink", links.nvlink, 2)
        if links.network is not None and cluster.nodes > 1:
            _add_link(graph, ("gpu", gpu), ("fabric",), "network", links.network, 2)

    node_G = np.arange(gpus) // cluster.gpus_per_node
    same_node = node_G[:, None] == node_G[None, :]
    kind_GG = np.where(same_node, KINDS.index("nvlink"), KINDS.index("network"))
    np.fill_diagonal(kind_GG, KINDS.index("local"))
    latency_GG = np.zeros((gpus, gpus))
    for k, kind in enumerate(KINDS[1:], start=1):
        # Pairs of this kind talk over links of this kind only, however fast the others are.
        view = nx.subgraph_view(
            graph, filter_edge=lambda a, b, kind=kind: graph.edges[a, b]["kind"] == kind
        )
        pairs = kind_GG == k
        for source, lengths in nx.all_pairs_dijkstra_path_length(view, weight="latency"):
            if source[0] != "gpu":
                continue
            for target, seconds in lengths.items():
                if target[0] == "gpu" and pairs[source[1], target[1]]:
                    latency_GG[source[1], target[1]] = seconds
    used = {"nvlink": links.nvlink, "network": links.network}
    return Topology(graph, kind_GG, latency_GG, {k: v for k, v in used.items() if v is not None})
