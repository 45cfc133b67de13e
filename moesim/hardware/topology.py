"""The cluster's links: per-pair link kinds in closed form, and the cluster as a networkx graph.

GPUs of one NVLink domain (a node, or a rack-scale domain such as GB200 NVL72:
``cluster.nvlink_domain``) talk over NVLink through the domain's switches, of different domains
over the network, whatever the latencies; a pair's latency is its kind's link latency (two
switched hops of half the link's latency each). Both follow from domain membership
(``domain_G``), so nothing here is all-pairs: ``kind_GG`` and ``latency_GG`` are built on
demand, for small clusters and tests, and the simulator reduces traffic over domains instead.

``build_topology(cluster, expert_tp)`` with ``expert_tp > 1`` is the topology of the expert
ranks: each a group of ``expert_tp`` consecutive GPUs whose ports each carry the rank's traffic
with one GPU's link (``sim/layout``).

The graph (``Topology.graph``, built on first use) describes the cluster for export: nodes
``("gpu", i)``, ``("host", n)`` per node (CPU memory, behind PCIe), ``("nvswitch", d)`` per
NVLink domain and one ``("fabric",)`` joining the NICs; edges carry ``kind`` (``nvlink`` |
``pcie`` | ``network``), ``bandwidth`` (per direction, bytes/s) and ``latency`` (seconds per
hop).
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
    """``gpus`` devices (GPUs, or expert ranks) in NVLink domains of ``domain`` devices, and
    the LinkSpec of each kind used."""

    cluster: ClusterSpec
    links: dict[str, LinkSpec]
    gpus: int
    domain: int

    @property
    def domains(self) -> int:
        return self.gpus // self.domain

    @cached_property
    def domain_G(self) -> np.ndarray:
        return np.arange(self.gpus) // self.domain

    def kind(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Index into ``KINDS`` of the path from GPUs ``source`` to ``target`` (broadcast)."""
        source, target = np.asarray(source), np.asarray(target)
        same_domain = source // self.domain == target // self.domain
        return np.where(source == target, LOCAL, np.where(same_domain, NVLINK, NETWORK))

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
            if links.nvlink is not None and cluster.domain > 1:
                domain = ("nvswitch", gpu // cluster.domain)
                _add_link(graph, ("gpu", gpu), domain, "nvlink", links.nvlink, 2)
            if links.network is not None and cluster.gpus > cluster.domain:
                _add_link(graph, ("gpu", gpu), ("fabric",), "network", links.network, 2)
        return graph


def _add_link(graph: nx.Graph, a: tuple, b: tuple, kind: str, link: LinkSpec, hops: int) -> None:
    graph.add_edge(a, b, kind=kind, bandwidth=link.bandwidth, latency=link.latency / hops)


def build_topology(cluster: ClusterSpec, expert_tp: int = 1) -> Topology:
    """The topology of ``cluster``'s GPUs, or (``expert_tp > 1``) of its expert ranks."""
    links = cluster.device.links
    used = {"nvlink": links.nvlink, "network": links.network}
    kept = {k: v for k, v in used.items() if v is not None}
    domain = max(cluster.domain // expert_tp, 1)
    return Topology(cluster, kept, cluster.gpus // expert_tp, domain)
