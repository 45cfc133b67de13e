"""PoolSpec: one pool of a disaggregated cluster (``cluster.pools``).

A ``prefill`` pool runs prompts, a ``decode`` pool the tokens after the first (DistServe,
Splitwise, Mooncake); one pool of role ``both`` is colocated serving. A pool's fields left out
take the cluster's (``gpus_per_node``, ``device``); the pools partition the cluster's GPUs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moesim.config.fields import Frozen
from moesim.config.hardware import HardwareProfile
from moesim.config.parallel import ParallelSpec

__all__ = ["PoolSpec", "check_roles"]

Role = Literal["prefill", "decode", "both"]


class PoolSpec(Frozen):
    role: Role
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=1, description="default: the cluster's")
    device: HardwareProfile | None = Field(default=None, description="default: the cluster's")
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    kv_transfer: Literal["layerwise", "after_prefill"] = Field(
        default="layerwise",
        description="prefill pool: layerwise sends each layer's KV as the layer finishes "
        "(overlapping the prompt's last step); after_prefill sends it once the step ends",
    )


def check_roles(pools: list[PoolSpec]) -> None:
    """One pool of role ``both``, or one ``prefill`` and one ``decode`` pool."""
    roles = sorted(pool.role for pool in pools)
    if roles not in (["both"], ["decode", "prefill"]):
        raise ValueError(
            f"roles are {', '.join(roles) or 'none'}: give one pool of role both, or one "
            "prefill and one decode pool"
        )
