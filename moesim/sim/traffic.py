"""All-to-all traffic per GPU and link kind, and the time a collective takes.

Arrays end in ``GK``: per GPU ``G`` and link kind ``K`` (index into ``hardware.KINDS``: local,
nvlink, network). Egress is what a GPU sends, ingress what it receives; traffic to itself is
``local`` and costs no link time. A GPU's part of an all-to-all lasts, on each link kind, the
larger of its egress and ingress over that port (ports are full duplex), plus the link's
latency; kinds run in parallel; the collective takes the time of its slowest participant.
"""

from __future__ import annotations

import numpy as np

from moesim.hardware import KINDS, Topology, alltoall_port_time
from moesim.policies import PlacementPlan

__all__ = ["alltoall_time", "count_exchange_bytes", "routed_tokens", "static_tokens"]

_K = len(KINDS)
COUNT_BYTES = 4  # one int32 per expert in the count exchange


def _kind_onehot(topology: Topology) -> np.ndarray:
    """``onehot_GHK[g, h, k]``: the path from ``g`` to ``h`` is of kind ``k``."""
    return np.eye(_K)[topology.kind_GG]


def static_tokens(
    capacity_G: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Padded dispatch rows ``(egress_LGK, ingress_LGK)``: ``C_g`` to every expert from ``g``."""
    onehot_GHK = _kind_onehot(topology)
    experts_LH = plan.experts_per_gpu_LG
    egress = capacity_G[None, :, None] * np.einsum("ghk,lh->lgk", onehot_GHK, experts_LH)
    ingress = experts_LH[:, :, None] * np.einsum("ghk,g->hk", onehot_GHK, capacity_G)[None]
    return egress, ingress


def count_exchange_bytes(plan: PlacementPlan, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """``(egress_LGK, ingress_LGK)`` of the count all-to-all: an int32 per remote expert."""
    onehot_GHK = _kind_onehot(topology)
    experts_LH = plan.experts_per_gpu_LG
    egress = COUNT_BYTES * np.einsum("ghk,lh->lgk", onehot_GHK, experts_LH)
    ingress = COUNT_BYTES * experts_LH[:, :, None] * onehot_GHK.sum(axis=0)[None]
    return egress, ingress


def routed_tokens(
    expert_ids_NLTK: np.ndarray, source_T: np.ndarray, plan: PlacementPlan, topology: Topology
) -> tuple[np.ndarray, np.ndarray]:
    """Exact dispatch rows ``(egress_NLGK, ingress_NLGK)`` when every assignment travels."""
    n, layers, tokens, top_k = expert_ids_NLTK.shape
    gpus, experts = plan.gpus, plan.units
    # Per (layer, source GPU, expert): the (GPU, link kind) cell it counts in, on each side.
    kind_LGE = topology.kind_GG[np.arange(gpus)[None, :, None], plan.owner_LU[:, None, :]]
    egress_cell = (np.arange(gpus)[None, :, None] * _K + kind_LGE).ravel()
    ingress_cell = (plan.owner_LU[:, None, :] * _K + kind_LGE).ravel()
    base_LX = (np.arange(layers)[:, None] * gpus + np.repeat(source_T, top_k)[None]) * experts
    lookup = expert_ids_NLTK.reshape(n, layers, tokens * top_k) + base_LX[None]
    step_layer = (np.arange(n * layers, dtype=np.int64) * (gpus * _K)).reshape(n, layers, 1)
    size = n * layers * gpus * _K
    shape = (n, layers, gpus, _K)
    egress = np.bincount((egress_cell[lookup] + step_layer).ravel(), minlength=size)
    ingress = np.bincount((ingress_cell[lookup] + step_layer).ravel(), minlength=size)
    return egress.reshape(shape), ingress.reshape(shape)


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
