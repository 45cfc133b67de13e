"""The cluster's links: per-pair link kinds in closed form, and the cluster as a networkx graph.

GPUs of one node talk over NVLink (through the node's switch), of different nodes over the
network, whatever the latencies; a pair's latency is its kind's link latency (two switched hops
of half the link's latency each). Both follow from node membership (``node_G``), so nothing
here is all-pairs: ``kind_GG`` and ``latency_GG`` are built on demand, for small clusters and
tests, and the simulator reduces traffic over nodes instead.

The graph (``Topology.graph``, built on first use) describes the cluster for export: nodes
``("gpu", i)``, ``("nvswitch", n)`` and ``("host", n)`` per node (CPU memory, behind PCIe) and
one ``("fabric",)`` joining the nodes' NICs; edges carry ``kind`` (``nvlink`` | ``pcie`` |
``network``), ``bandwidth`` (per direction, bytes/s) and ``latency`` (seconds per hop).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from moesim.config import LINK_KINDS, ClusterSpec, LinkSpec

__all__ = ["KINDS", "Topology", "build_topology"]

KINDS = LINK_KINDS
LOCAL, NVLINK, NETWORK = (KINDS.index(kind) for kind in ("local", "nvlink", "network"))


@dataclass(frozen=True)
class Topology:
    """The cluster's GPUs grouped into nodes, and the LinkSpec of each kind used."""

    cluster: ClusterSpec
    links: dict[str, LinkSpec]

    @property
    def gpus(self) -> int:
        return self.cluster.gpus

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def nodes(self) -> int:
        return self.cluster.nodes

    @cached_property
    def node_G(self) -> np.ndarray:
        return np.arange(self.gpus) // self.gpus_per_node

    def kind(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Index into ``KINDS`` of the path from GPUs ``source`` to ``target`` (broadcast)."""
        source, target = np.asarray(source), np.asarray(target)
        same_node = source // self.gpus_per_node == target // self.gpus_per_node
        return np.where(source == target, LOCAL, np.where(same_node, NVLINK, NETWORK))

    @cached_property
    def kind_GG(self) -> np.ndarray:
        """``kind_GG[g, h]``: the kind of the path from ``g`` to ``h`` (G x G: small clusters)."""
        gpu = np.arange(self.gpus)
        return self.kind(gpu[:, None], gpu[None, :])

    @cached_property
    def latency_GG(self) -> np.ndarray:
        """Seconds of the path from ``g`` to ``h``: its kind's link latency (0 to itself)."""
        latency_K = np.zeros(len(KINDS))
        for k, kind in enumerate(KINDS):
            if kind in self.links:
                latency_K[k] = self.links[kind].latency
        return latency_K[self.kind_GG]

    @cached_property
    def graph(self) -> nx.Graph:
        cluster, links = self.cluster, self.cluster.device.links
        graph = nx.Graph()
        for gpu in range(cluster.gpus):
            node = gpu // cluster.gpus_per_node
            graph.add_node(("gpu", gpu), node=node)
            _add_link(graph, ("gpu", gpu), ("host", node), "pcie", links.host, 1)
            if links.nvlink is not None and cluster.gpus_per_node > 1:
                _add_link(graph, ("gpu", gpu), ("nvswitch", node), "nvlink", links.nvlink, 2)
            if links.network is not None and cluster.nodes > 1:
                _add_link(graph, ("gpu", gpu), ("fabric",), "network", links.network, 2)
        return graph


def _add_link(graph: nx.Graph, a: tuple, b: tuple, kind: str, link: LinkSpec, hops: int) -> None:
    graph.add_edge(a, b, kind=kind, bandwidth=link.bandwidth, latency=link.latency / hops)


def build_topology(cluster: ClusterSpec) -> Topology:
    """The topology of ``cluster`` (NVLink through a switch inside a node)."""
    links = cluster.device.links
    used = {"nvlink": links.nvlink, "network": links.network}
    return Topology(cluster, {k: v for k, v in used.items() if v is not None})
