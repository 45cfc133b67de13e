"""Cost functions: the time of an operation from its FLOPs and bytes, on one device kind.

The default is the roofline, ``launches * launch_overhead + max(flops / (peak * efficiency),
bytes / (bandwidth * efficiency))``, evaluated element-wise on numpy arrays. Host-device copies
and link transfers follow ``latency + bytes / (bandwidth * efficiency)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import HardwareProfile, LinkSpec

__all__ = ["DeviceCosts", "transfer_time"]


@dataclass(frozen=True)
class DeviceCosts:
    """Roofline of one device kind for one dtype."""

    flops_per_s: float
    hbm_bytes_per_s: float
    launch_overhead_s: float

    @classmethod
    def from_profile(cls, profile: HardwareProfile, dtype: str) -> DeviceCosts:
        compute, memory = profile.compute, profile.memory
        return cls(
            flops_per_s=compute.peak_flops[dtype] * compute.efficiency,
            hbm_bytes_per_s=memory.bandwidth * memory.efficiency,
            launch_overhead_s=compute.launch_overhead,
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


def transfer_time(link: LinkSpec, bytes_moved: np.ndarray | float) -> np.ndarray:
    """Seconds to move ``bytes_moved`` over ``link`` (zero bytes cost nothing)."""
    seconds = link.latency + np.divide(bytes_moved, link.bandwidth * link.efficiency)
    return np.where(np.asarray(bytes_moved) > 0, seconds, 0.0)
