"""Cost functions: the time of an operation from its FLOPs and bytes, on one device kind.

The default is the roofline, ``launches * launch_overhead + max(flops / (peak * efficiency),
bytes / (bandwidth * efficiency))``, evaluated element-wise on numpy arrays. Host-device copies
and link transfers follow ``latency + bytes / (bandwidth * efficiency)``. A calibrated profile's
measured tables (GEMM times, copy and all-to-all curves) replace the roofline where they apply,
and its per-model tables (``tables_for``) the whole operators of the model they were measured
for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import (
    DTYPE_BYTES,
    AttentionCurves,
    GemmTable,
    HardwareProfile,
    LinkSpec,
    MeasuredCurve,
    ModelSpec,
)
from moesim.config.model_tables import ModelTables
from moesim.hardware.model_tables import tables_for
from moesim.hardware.tables import attention_core_time, curve_time, gemm_time

__all__ = [
    "DeviceCosts",
    "allreduce_time",
    "alltoall_port_time",
    "port_time_is_monotone",
    "transfer_time",
]


@dataclass(frozen=True)
class DeviceCosts:
    """Roofline of one device kind for one dtype, and its measured GEMM table if calibrated."""

    flops_per_s: float
    hbm_bytes_per_s: float
    launch_overhead_s: float
    dtype_bytes: int = 2
    gemm: GemmTable | None = None
    attention: AttentionCurves | None = None
    peak_ratio: dict[str, float] | None = None  # this dtype's peak over another's
    models: tuple[ModelTables, ...] = ()  # per model card, its measured operators

    def tables_for(self, model: ModelSpec) -> ModelTables | None:
        """The measured operator tables of ``model`` (its card's name and shapes), if any."""
        return tables_for(self.models, model)

    def flops_as(self, flops: np.ndarray | float, dtype: str) -> np.ndarray | float:
        """``flops`` done in ``dtype``, as the FLOPs of this costs' dtype that take as long
        (so that one roofline op can mix precisions)."""
        if self.peak_ratio is None or dtype not in self.peak_ratio:
            return flops
        return flops * self.peak_ratio[dtype]

    @classmethod
    def from_profile(cls, profile: HardwareProfile, dtype: str) -> DeviceCosts:
        compute, memory = profile.compute, profile.memory
        return cls(
            flops_per_s=compute.peak_flops[dtype] * compute.efficiency,
            hbm_bytes_per_s=memory.bandwidth * memory.efficiency,
            launch_overhead_s=compute.launch_overhead,
            dtype_bytes=DTYPE_BYTES[dtype],
            peak_ratio={
                other: compute.peak_flops[dtype] / peak
                for other, peak in compute.peak_flops.items()
            },
            gemm=compute.gemm if compute.gemm is not None and compute.gemm.dtype == dtype else None,
            attention=(
                compute.attention
                if compute.attention is not None and compute.attention.dtype == dtype
                else None
            ),
            models=tuple(compute.models or ()),
        )

    def op_time(
        self,
        flops: np.ndarray | float,
        bytes_moved: np.ndarray | float,
        launches: np.ndarray | float = 1,
    ) -> np.ndarray:
        """Seconds for kernels doing ``flops`` and moving ``bytes_moved`` (element-wise)."""
        return launches * self.launch_overhead_s + np.maximum(
            np.divide(flops, self.flops_per_s), np.divide(bytes_moved, self.hbm_bytes_per_s)
        )

    def matmul_time(self, rows: np.ndarray | float, k: int, n: int) -> np.ndarray:
        """Seconds of ``(rows x k) @ (k x n)``: the measured table, else the roofline."""
        if self.gemm is not None:
            return gemm_time(self.gemm, rows, k, n)
        m = np.asarray(rows, dtype=np.float64)
        moved = (m * k + k * n + m * n) * self.dtype_bytes
        return np.where(m > 0, self.op_time(2.0 * m * k * n, moved), 0.0)

    def attention_core_time(
        self, flops: np.ndarray, kv_bytes: np.ndarray, moved: np.ndarray, decode: bool
    ) -> np.ndarray:
        """Seconds of attention cores: the measured curve (by K/V bytes read in decode, by
        FLOPs in prefill), else one roofline op per core."""
        if self.attention is not None:
            return attention_core_time(self.attention, kv_bytes if decode else flops, decode)
        return self.op_time(flops, moved)


def allreduce_time(
    link: LinkSpec, bytes_moved: np.ndarray | float, ranks: int, switched: bool
) -> np.ndarray:
    """Seconds of an all-reduce of ``bytes_moved`` per rank among ``ranks`` over ``link``: a
    reduce-scatter and an all-gather, ``2 (ranks - 1) / ranks`` of the bytes through each
    port; through a switch (NVSwitch) each phase is one exchange with all peers (one latency
    each), over a ring ``ranks - 1`` steps each. Zero for one rank or no bytes."""
    if ranks <= 1:
        return np.zeros(np.shape(bytes_moved))
    hops = 2 if switched else 2 * (ranks - 1)
    port_bytes = np.multiply(bytes_moved, 2 * (ranks - 1) / ranks)
    seconds = hops * link.latency + np.divide(port_bytes, link.bandwidth * link.efficiency)
    return np.where(np.asarray(bytes_moved) > 0, seconds, 0.0)


def transfer_time(link: LinkSpec, bytes_moved: np.ndarray | float) -> np.ndarray:
    """Seconds to move ``bytes_moved`` over ``link`` (zero bytes cost nothing)."""
    if link.transfer is not None:
        return curve_time(link.transfer, bytes_moved)
    seconds = link.latency + np.divide(bytes_moved, link.bandwidth * link.efficiency)
    return np.where(np.asarray(bytes_moved) > 0, seconds, 0.0)


def alltoall_port_time(link: LinkSpec, port_bytes: np.ndarray, ranks: int) -> np.ndarray:
    """Seconds of a GPU's share of an all-to-all among ``ranks`` over ``link``, by the bytes
    through its port: the measured curve of the nearest world size not above ``ranks`` (else
    the smallest measured), else the link's latency-bandwidth model."""
    if link.alltoall:
        return curve_time(_alltoall_curve(link, ranks), port_bytes)
    return transfer_time(link, port_bytes * link.shared_by)


def _alltoall_curve(link: LinkSpec, ranks: int) -> MeasuredCurve:
    sizes = sorted(link.alltoall)
    below = [w for w in sizes if w <= ranks]
    return link.alltoall[below[-1] if below else sizes[0]]


def port_time_is_monotone(link: LinkSpec, ranks: int) -> bool:
    """Whether ``alltoall_port_time`` never falls as the bytes grow (always for the model;
    for a measured curve, when its seconds never fall from one size to the next)."""
    if link.alltoall:
        curve = _alltoall_curve(link, ranks)
    elif link.transfer is not None:
        curve = link.transfer
    else:
        return True
    return bool(np.all(np.diff(curve.seconds) >= 0))
