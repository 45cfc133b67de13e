"""ClusterSpec: the GPUs of a scenario, their NVLink domains, the parallel layout and, for
disaggregated serving, the pools that partition the GPUs."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from moesim.config.fields import Frozen
from moesim.config.hardware import HardwareProfile
from moesim.config.parallel import ParallelSpec
from moesim.config.pools import PoolSpec, check_roles

__all__ = ["MAX_GPUS", "ClusterSpec"]

MAX_GPUS = 8192  # count-level routing and per-GPU traffic grow with G x E per layer


class ClusterSpec(Frozen):
    """``nodes`` of ``gpus_per_node`` GPUs; ``nvlink_domain`` GPUs share NVLink (default a
    node; 72 for a GB200 NVL72 rack of 18 four-GPU trays); ``parallel``: the layout;
    ``pools``: prefill and decode pools (``PoolSpec``), each with its own layout."""

    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=8, ge=1)
    device: HardwareProfile
    nvlink_domain: int | None = Field(default=None, ge=1)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    pools: list[PoolSpec] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _pool_nodes(cls, data: Any) -> Any:
        """Without ``nodes``, a cluster of pools has the nodes its pools' GPUs fill."""
        pools = data.get("pools") if isinstance(data, dict) else None
        if not isinstance(pools, list) or "nodes" in data:
            return data
        per_node = data.get("gpus_per_node", 8)
        try:
            gpus = sum(p.get("nodes", 1) * (p.get("gpus_per_node") or per_node) for p in pools)
            return {**data, "nodes": max(1, -(-gpus // per_node))}
        except (AttributeError, TypeError, ZeroDivisionError):
            return data  # validation reports what is wrong

    @model_validator(mode="after")
    def _size(self) -> ClusterSpec:
        if self.gpus > MAX_GPUS:
            raise ValueError(f"{self.gpus} GPUs; moesim models at most {MAX_GPUS}")
        domain = self.domain
        if domain > self.gpus:
            raise ValueError(f"nvlink_domain is {domain} GPUs, more than the cluster's {self.gpus}")
        if domain % self.gpus_per_node or self.gpus % domain:
            raise ValueError(
                f"nvlink_domain ({domain}) must be a whole number of nodes "
                f"({self.gpus_per_node} GPUs each) and divide the cluster's {self.gpus} GPUs"
            )
        if self.pools is not None:
            self._check_pools(self.pools)
            return self
        for name in ("attention_tp", "expert_tp"):
            tp = getattr(self.parallel, name)
            if self.gpus % tp:
                raise ValueError(
                    f"parallel.{name} ({tp}) does not divide the cluster's {self.gpus} GPUs"
                )
        return self

    def _check_pools(self, pools: list[PoolSpec]) -> None:
        try:
            check_roles(pools)
        except ValueError as error:
            raise ValueError(f"pools: {error}") from None
        if self.parallel != ParallelSpec():
            raise ValueError("parallel: with pools, give each pool its own parallel layout")
        held = sum(self.pool(pool).gpus for pool in pools)
        if held != self.gpus:
            raise ValueError(
                f"pools: the pools hold {held} GPUs, the cluster {self.gpus} "
                f"({self.nodes} nodes x {self.gpus_per_node}); they must partition it"
            )

    def pool(self, pool: PoolSpec) -> ClusterSpec:
        """The cluster that ``pool`` runs on: its GPUs, device and layout (validated)."""
        per_node = pool.gpus_per_node or self.gpus_per_node
        gpus = pool.nodes * per_node
        domain = min(self.domain, gpus)  # a rack-wide NVLink domain holds the pool's nodes
        if domain % per_node or gpus % domain:
            domain = per_node
        try:
            return ClusterSpec(
                nodes=pool.nodes,
                gpus_per_node=per_node,
                device=pool.device or self.device,
                nvlink_domain=None if domain == per_node else domain,
                parallel=pool.parallel,
            )
        except ValueError as error:
            raise ValueError(f"pools ({pool.role}): {_message(error)}") from None

    def role(self, role: str) -> PoolSpec | None:
        """The pool of ``role``, if the cluster has one."""
        return next((pool for pool in self.pools or [] if pool.role == role), None)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def domain(self) -> int:
        """GPUs per NVLink domain."""
        return self.nvlink_domain or self.gpus_per_node


def _message(error: ValueError) -> str:
    """A nested validation error's first message, without pydantic's prefix."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first["msg"]).removeprefix("Value error, ")
    return str(error)
