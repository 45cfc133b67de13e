"""ClusterSpec: the GPUs of a scenario, their NVLink domains and the parallel layout."""

from __future__ import annotations

from pydantic import Field, model_validator

from moesim.config.fields import Frozen
from moesim.config.hardware import HardwareProfile
from moesim.config.parallel import ParallelSpec

__all__ = ["MAX_GPUS", "ClusterSpec"]

MAX_GPUS = 8192  # count-level routing and per-GPU traffic grow with G x E per layer


class ClusterSpec(Frozen):
    """``nodes`` of ``gpus_per_node`` GPUs; ``nvlink_domain`` GPUs share NVLink (default a
    node; 72 for a GB200 NVL72 rack of 18 four-GPU trays); ``parallel``: the layout."""

    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=8, ge=1)
    device: HardwareProfile
    nvlink_domain: int | None = Field(default=None, ge=1)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)

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
        for name in ("attention_tp", "expert_tp"):
            tp = getattr(self.parallel, name)
            if self.gpus % tp:
                raise ValueError(
                    f"parallel.{name} ({tp}) does not divide the cluster's {self.gpus} GPUs"
                )
        return self

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def domain(self) -> int:
        """GPUs per NVLink domain."""
        return self.nvlink_domain or self.gpus_per_node
