"""All-to-all traffic per GPU and link kind, and the time a collective takes.

Arrays end in ``GK``: per GPU ``G`` and link kind ``K`` (index into ``hardware.KINDS``: local,
nvlink, network). Egress is what a GPU sends, ingress what it receives; traffic to itself is
``local`` and costs no link time. A GPU's part of an all-to-all lasts, on each link kind, the
larger of its egress and ingress over that port (ports are full duplex), plus the link's
latency; kinds run in parallel; the collective takes the time of its slowest participant.
Link kinds follow node membership, so per-kind sums are node sums, never G x G lookups.
"""

from __future__ import annotations

import numpy as np

from moesim.hardware import KINDS, Topology, alltoall_port_time
from moesim.policies import PlacementPlan

__all__ = [
    "alltoall_time",
    "by_kind",
    "count_exchange_bytes",
    "counted_tokens",
    "routed_tokens",
    "static_tokens",
]

_K = len(KINDS)
COUNT_BYTES = 4  # one int32 per expert in the count exchange


def by_kind(values_XH: np.ndarray, topology: Topology) -> np.ndarray:
    """``out_XGK[..., g, k]``: the sum of ``values_XH[..., h]`` over the GPUs ``h`` that ``g``
    reaches over links of kind ``k`` (itself, its node's others, the other nodes')."""
    shape = values_XH.shape
    node_XN = values_XH.reshape(*shape[:-1], topology.nodes, topology.gpus_per_node).sum(axis=-1)
    own_node_XG = np.repeat(node_XN, topology.gpus_per_node, axis=-1)
    total_X1 = values_XH.sum(axis=-1, keepdims=True)
    return np.stack([values_XH, own_node_XG - values_XH, total_X1 - own_node_XG], axis=-1)


def static_tokens(
    capacity_G: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Padded dispatch rows ``(egress_LGK, ingress_LGK)``: ``C_g`` to every expert from ``g``."""
    experts_LH = plan.experts_per_gpu_LG
    egress = capacity_G[None, :, None] * by_kind(experts_LH, topology)
    ingress = experts_LH[:, :, None] * by_kind(capacity_G, topology)[None]
    return egress, ingress


def count_exchange_bytes(plan: PlacementPlan, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """``(egress_LGK, ingress_LGK)`` of the count all-to-all: an int32 per remote expert."""
    experts_LH = plan.experts_per_gpu_LG
    egress = COUNT_BYTES * by_kind(experts_LH, topology)
    peers_GK = by_kind(np.ones(plan.gpus), topology)
    ingress = COUNT_BYTES * experts_LH[:, :, None] * peers_GK[None]
    return egress, ingress


def routed_tokens(
    units_NLTK: np.ndarray, source_T: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Exact dispatch rows ``(egress_NLGK, ingress_NLGK)`` when every assignment travels,
    from each token's placement slots: one pass over the assignments, no G x E array."""
    n, layers, tokens, top_k = units_NLTK.shape
    gpus, units = plan.gpus, plan.units
    index = np.int32 if n * layers * gpus * _K < np.iinfo(np.int32).max else np.int64
    owner = plan.owner_LU.astype(index).ravel()
    slot_NLX = units_NLTK.reshape(n, layers, tokens * top_k).astype(index)
    slot_NLX += (np.arange(layers, dtype=index) * units)[None, :, None]
    owner_NLX = owner[slot_NLX]  # destination GPU of each assignment
    source_X = np.repeat(source_T, top_k).astype(index)
    # kind in closed form: 0 local, 1 same node, 2 another node (the order of KINDS)
    gpn = topology.gpus_per_node
    kind_NLX = (owner_NLX != source_X).astype(index)
    if topology.nodes > 1:
        kind_NLX += (owner_NLX // gpn != source_X // gpn).astype(index)
    step_layer = (np.arange(n * layers, dtype=index) * (gpus * _K)).reshape(n, layers, 1)
    size, shape = n * layers * gpus * _K, (n, layers, gpus, _K)
    kind_NLX += step_layer
    egress = np.bincount((kind_NLX + source_X * _K).ravel(), minlength=size)
    ingress = np.bincount((kind_NLX + owner_NLX * _K).ravel(), minlength=size)
    return egress.reshape(shape), ingress.reshape(shape)


def counted_tokens(
    counts_NLGU: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Exact dispatch rows ``(egress_NLGK, ingress_NLGK)`` from count-level routing: the rows
    each source GPU sends to each placement slot, summed per destination GPU, then by kind."""
    sent_NLGH = plan.per_gpu_sum(counts_NLGU)  # source g -> destination h
    egress = _diagonal_split(sent_NLGH, topology)
    ingress = _diagonal_split(np.swapaxes(sent_NLGH, -1, -2), topology)
    return egress, ingress


def _diagonal_split(pairs_XGH: np.ndarray, topology: Topology) -> np.ndarray:
    """``out_XGK``: the row sums of ``pairs_XGH`` split by the kind of each ``(g, h)``."""
    shape = pairs_XGH.shape
    per_node = pairs_XGH.reshape(*shape[:-1], topology.nodes, topology.gpus_per_node).sum(-1)
    own = per_node[..., np.arange(topology.gpus), topology.node_G]
    local = np.diagonal(pairs_XGH, axis1=-2, axis2=-1)
    total = pairs_XGH.sum(axis=-1)
    return np.stack([local, own - local, total - own], axis=-1)


def alltoall_time(
    egress_XGK: np.ndarray, ingress_XGK: np.ndarray, topology: Topology, launch_overhead_s: float
) -> np.ndarray:
    """Seconds of an all-to-all moving these bytes: the slowest GPU's slowest link kind."""
    per_gpu = np.zeros(egress_XGK.shape[:-1])
    for k, kind in enumerate(KINDS):
        link = topology.links.get(kind)
        if link is None:
            continue
        port = np.maximum(egress_XGK[..., k], ingress_XGK[..., k])
        seconds = alltoall_port_time(link, port, topology.gpus)
        launch = 0.0 if link.alltoall else launch_overhead_s  # a measured curve includes it
        per_gpu = np.maximum(per_gpu, np.where(seconds > 0, seconds + launch, 0.0))
    return per_gpu.max(axis=-1)
