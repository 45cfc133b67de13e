"""The cluster as a networkx graph, and the per-pair link kinds the collectives use.

Nodes: ``("gpu", i)``, ``("nvswitch", n)`` per node, ``("host", n)`` per node (CPU memory,
behind PCIe) and one ``("fabric",)`` that joins the nodes' NICs. Edges carry ``kind``
(``nvlink`` | ``pcie`` | ``network``), ``bandwidth`` (per direction, bytes/s) and ``latency``
(seconds, half the link's on each hop of a switched path). A GPU pair talks over the path of
least latency; its kind is the kind of the path's first hop.
"""

from __future__ import annotations

import itertools
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

    kind_GG = np.zeros((gpus, gpus), dtype=np.int64)
    latency_GG = np.zeros((gpus, gpus))
    gpu_nodes = [("gpu", g) for g in range(gpus)]
    for source, paths in nx.all_pairs_dijkstra_path(graph, weight="latency"):
        if source[0] != "gpu":
            continue
        for target in gpu_nodes:
            path = paths.get(target)
            if target == source or path is None:
                continue
            kind = graph.edges[path[0], path[1]]["kind"]
            kind_GG[source[1], target[1]] = KINDS.index(kind) if kind in KINDS else 0
            latency_GG[source[1], target[1]] = sum(
                graph.edges[a, b]["latency"] for a, b in itertools.pairwise(path)
            )
    used = {"nvlink": links.nvlink, "network": links.network}
    return Topology(graph, kind_GG, latency_GG, {k: v for k, v in used.items() if v is not None})
