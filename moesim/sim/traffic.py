"""All-to-all traffic per GPU and link kind, and the time a collective takes.

Arrays start with ``K`` and end in ``G``: per link kind ``K`` (index into ``hardware.KINDS``:
local, nvlink, network) and GPU ``G``, so that each kind's plane is contiguous. Egress is what
a GPU sends, ingress what it receives; traffic to itself is ``local`` and costs no link time.
A GPU's part of an all-to-all lasts, on each link kind, the larger of its egress and ingress
over that port (ports are full duplex), plus the link's latency; kinds run in parallel; the
collective takes the time of its slowest participant. Link kinds follow NVLink-domain membership,
so per-kind sums are domain sums, never G x G lookups.
"""

from __future__ import annotations

import numpy as np

from moesim.hardware import KINDS, Topology, alltoall_port_time, port_time_is_monotone
from moesim.hardware.topology import NETWORK, NVLINK
from moesim.policies import PlacementPlan

__all__ = [
    "alltoall_time",
    "by_kind",
    "count_exchange_bytes",
    "counted_tokens",
    "domain_rows",
    "routed_tokens",
    "static_tokens",
    "via_domains",
]

_K = len(KINDS)
COUNT_BYTES = 4  # one int32 per expert in the count exchange


def by_kind(values_XH: np.ndarray, topology: Topology) -> np.ndarray:
    """``out_KXG[k, ..., g]``: the sum of ``values_XH[..., h]`` over the GPUs ``h`` that ``g``
    reaches over links of kind ``k`` (itself, its node's others, the other nodes')."""
    shape = values_XH.shape
    node_XN = values_XH.reshape(*shape[:-1], topology.domains, topology.domain).sum(axis=-1)
    own_node_XG = np.repeat(node_XN, topology.domain, axis=-1)
    total_X1 = values_XH.sum(axis=-1, keepdims=True)
    return np.stack([values_XH, own_node_XG - values_XH, total_X1 - own_node_XG])


def static_tokens(
    capacity_G: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Padded dispatch rows ``(egress_KLG, ingress_KLG)``: ``C_g`` to every expert from ``g``."""
    experts_LH = plan.experts_per_gpu_LG
    egress = capacity_G * by_kind(experts_LH, topology)
    ingress = experts_LH * by_kind(capacity_G, topology)[:, None]
    return egress, ingress


def count_exchange_bytes(plan: PlacementPlan, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """``(egress_KLG, ingress_KLG)`` of the count all-to-all: an int32 per remote expert."""
    experts_LH = plan.experts_per_gpu_LG
    egress = COUNT_BYTES * by_kind(experts_LH, topology)
    peers_KG = by_kind(np.ones(plan.gpus), topology)
    ingress = COUNT_BYTES * experts_LH * peers_KG[:, None]
    return egress, ingress


def routed_tokens(
    units_NLTK: np.ndarray,
    source_T: np.ndarray,
    received_NLG: np.ndarray,
    plan: PlacementPlan,
    topology: Topology,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact dispatch rows ``(egress_KNLG, ingress_KNLG)`` when every assignment travels,
    from each token's placement slots and what each GPU receives (``received_NLG``).

    Only assignments that stay on their source's node are counted one by one: a GPU sends
    ``K`` rows per token and receives ``received_NLG``, so what crosses the network is the
    rest. One pass over the assignments finds them; no G x E or G x G array is built.
    """
    n, layers, tokens, top_k = units_NLTK.shape
    gpus, gpn = plan.gpus, topology.domain
    owner_NLTK = _owner(units_NLTK, plan)
    source_11T1 = source_T.astype(owner_NLTK.dtype).reshape(1, 1, tokens, 1)
    if topology.domains == 1:
        near = np.flatnonzero(owner_NLTK == source_11T1)
    else:
        near = np.flatnonzero(owner_NLTK // gpn == source_11T1 // gpn)
    source_X = source_T[near // top_k % tokens]
    owner_X = owner_NLTK.ravel()[near]
    row_X = near // (tokens * top_k) * gpus  # (step, layer) row of each near assignment
    size = n * layers * gpus
    sent_G = np.bincount(source_T, minlength=gpus) * top_k
    local = owner_X == source_X
    local_NLG = np.bincount(row_X[local] + source_X[local], minlength=size).reshape(-1, gpus)
    if topology.domains == 1:
        node_out_NLG = np.broadcast_to(sent_G, local_NLG.shape)
        node_in_NLG = received_NLG.reshape(-1, gpus)
    else:
        node_out_NLG = np.bincount(row_X + source_X, minlength=size).reshape(-1, gpus)
        node_in_NLG = np.bincount(row_X + owner_X, minlength=size).reshape(-1, gpus)
    shape = (_K, n, layers, gpus)
    egress = np.stack([local_NLG, node_out_NLG - local_NLG, sent_G - node_out_NLG])
    received = received_NLG.reshape(-1, gpus)
    ingress = np.stack([local_NLG, node_in_NLG - local_NLG, received - node_in_NLG])
    return egress.reshape(shape), ingress.reshape(shape)


def _owner(units_NLTK: np.ndarray, plan: PlacementPlan) -> np.ndarray:
    """The GPU of each assignment's slot: a division where each GPU holds a block of slots."""
    if plan.blocked:
        return units_NLTK // (plan.units // plan.gpus)
    layers = units_NLTK.shape[1]
    owner = plan.owner_LU.astype(np.int32).ravel()
    offsets = (np.arange(layers, dtype=np.int32) * plan.units).reshape(1, layers, 1, 1)
    return owner[units_NLTK.astype(np.int32) + offsets]


def counted_tokens(
    counts_NLGU: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Exact dispatch rows ``(egress_KNLG, ingress_KNLG)`` from count-level routing: the rows
    each source GPU sends to each placement slot, summed per destination GPU, then by kind."""
    sent_NLGH = plan.per_gpu_sum(counts_NLGU)  # source g -> destination h
    egress = _diagonal_split(sent_NLGH, topology)
    ingress = _diagonal_split(np.swapaxes(sent_NLGH, -1, -2), topology)
    return egress, ingress


def domain_rows(
    plan: PlacementPlan,
    topology: Topology,
    units_NLTK: np.ndarray | None = None,
    source_T: np.ndarray | None = None,
    counts_NLGU: np.ndarray | None = None,
) -> np.ndarray:
    """``rows_NLGD``: the assignments each source GPU sends into each NVLink domain, from
    token-level (``units_NLTK`` with ``source_T``) or count-level routing."""
    domains = topology.domains
    if counts_NLGU is not None:
        sent_NLGH = plan.per_gpu_sum(counts_NLGU)
        return sent_NLGH.reshape(*sent_NLGH.shape[:-1], domains, topology.domain).sum(-1)
    n, layers, tokens, top_k = units_NLTK.shape
    domain_X = (_owner(units_NLTK, plan) // topology.domain).astype(np.int64).ravel()
    row_X = np.arange(n * layers).repeat(tokens * top_k)
    source_X = np.tile(np.repeat(source_T, top_k), n * layers)
    keys = (row_X * plan.gpus + source_X) * domains + domain_X
    counts = np.bincount(keys, minlength=n * layers * plan.gpus * domains)
    return counts.reshape(n, layers, plan.gpus, domains)


def via_domains(
    egress_KNLG: np.ndarray,
    ingress_KNLG: np.ndarray,
    rows_NLGD: np.ndarray,
    tokens_G: np.ndarray,
    top_k: int,
    topology: Topology,
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch rows when a token crosses the network once per remote domain it needs and is
    forwarded over NVLink inside it (DeepEP's normal kernels, to the GPU of the same local
    index): the distinct tokens per (source, domain) follow from the assignments into the
    domain as if each of a token's ``top_k`` picks fell there independently,
    ``S (1 - (1 - c / (S K))^K)``. A domain's GPUs share its relayed rows evenly, and a row
    relayed to its own expert's GPU needs no forward."""
    size, domains = topology.domain, topology.domains
    remote_GD = topology.domain_G[:, None] != np.arange(domains)[None, :]
    tokens = np.maximum(tokens_G, 1)[:, None].astype(np.float64)
    share = np.minimum(rows_NLGD / (tokens * top_k), 1.0)
    distinct_NLGD = np.where(remote_GD, tokens * (1.0 - (1.0 - share) ** top_k), 0.0)
    relayed_NLD = distinct_NLGD.sum(axis=2)  # network rows into each domain
    forwarded_NLD = np.where(remote_GD, rows_NLGD, 0).sum(axis=2) * (size - 1) / size
    egress, ingress = egress_KNLG.astype(np.float64), ingress_KNLG.astype(np.float64)
    direct_in = ingress[NETWORK].copy()
    egress[NETWORK] = distinct_NLGD.sum(axis=-1)
    ingress[NETWORK] = np.repeat(relayed_NLD / size, size, axis=-1)
    egress[NVLINK] += np.repeat(forwarded_NLD / size, size, axis=-1)
    ingress[NVLINK] += direct_in * (size - 1) / size
    return egress, ingress


def _diagonal_split(pairs_XGH: np.ndarray, topology: Topology) -> np.ndarray:
    """``out_KXG``: the row sums of ``pairs_XGH`` split by the kind of each ``(g, h)``."""
    shape = pairs_XGH.shape
    per_node = pairs_XGH.reshape(*shape[:-1], topology.domains, topology.domain).sum(-1)
    own = per_node[..., np.arange(topology.gpus), topology.domain_G]
    local = np.diagonal(pairs_XGH, axis1=-2, axis2=-1)
    total = pairs_XGH.sum(axis=-1)
    return np.stack([local, own - local, total - own])


def alltoall_time(
    egress_KXG: np.ndarray,
    ingress_KXG: np.ndarray,
    topology: Topology,
    launch_overhead_s: float,
    row_bytes: float = 1.0,
) -> np.ndarray:
    """Seconds of an all-to-all moving these rows of ``row_bytes`` bytes: the slowest GPU's
    slowest link kind.

    Where a link's time grows with the bytes (the latency-bandwidth model, a monotone
    measured curve), the slowest GPU is the one with the most bytes: the time is taken of
    that GPU only, not of each."""
    out = np.zeros(egress_KXG.shape[1:-1])
    for k, kind in enumerate(KINDS):
        link = topology.links.get(kind)
        if link is None:
            continue
        port_XG = np.maximum(egress_KXG[k], ingress_KXG[k])
        monotone = port_time_is_monotone(link, topology.gpus)
        port = port_XG.max(axis=-1) if monotone else port_XG
        seconds = alltoall_port_time(link, port * row_bytes, topology.gpus)
        launch = 0.0 if link.alltoall else launch_overhead_s  # a measured curve includes it
        seconds = np.where(seconds > 0, seconds + launch, 0.0)
        out = np.maximum(out, seconds if monotone else seconds.max(axis=-1))
    return out
