"""HardwareProfile: one GPU kind, its host and its links, each group of figures with provenance.

Bandwidths are per GPU and per direction. ``efficiency`` is the achievable fraction of the peak
that the roofline cost model applies (datasheet profiles estimate it; calibration measures it).
A calibrated profile also carries measured tables (``gemm``, ``attention``, ``transfer``,
``alltoall``) that
the cost model interpolates in preference to the roofline, and per model card the operators
as the reference executor runs them (``compute.models``, ``config.model_tables``).
"""

from __future__ import annotations

from pydantic import Field

from moesim.config.fields import (
    Bytes,
    BytesPerSecond,
    Efficiency,
    FlopsPerSecond,
    Frozen,
    Provenance,
    Seconds,
)
from moesim.config.measured import AttentionCurves, GemmTable, MeasuredCurve
from moesim.config.model_tables import ModelTables

__all__ = [
    "LINK_KINDS",
    "ComputeSpec",
    "HardwareProfile",
    "HostSpec",
    "LinkSpec",
    "LinksSpec",
    "MemorySpec",
]


LINK_KINDS = ("local", "nvlink", "network")  # how two GPUs talk; "local" is a GPU to itself


class ComputeSpec(Frozen):
    peak_flops: dict[str, FlopsPerSecond] = Field(description="dense peak per dtype")
    efficiency: Efficiency = 0.7
    launch_overhead: Seconds = 5e-6
    gemm: GemmTable | None = Field(default=None, description="measured matmul times")
    attention: AttentionCurves | None = Field(
        default=None, description="measured attention-core times"
    )
    models: list[ModelTables] | None = Field(
        default=None, min_length=1, description="per model card: its operators, measured"
    )
    provenance: Provenance


class MemorySpec(Frozen):
    capacity: Bytes
    bandwidth: BytesPerSecond
    efficiency: Efficiency = 0.8
    provenance: Provenance


class LinkSpec(Frozen):
    """One kind of link as seen from one GPU: its port bandwidth per direction and latency."""

    bandwidth: BytesPerSecond
    latency: Seconds
    efficiency: Efficiency = 0.8
    shared_by: int = Field(default=1, ge=1, description="GPUs that share this port")
    pinned: bool | None = Field(default=None, description="host link: pinned host memory")
    overlaps_compute: bool = Field(
        default=True,
        description="host link: copies run on a copy engine beside compute (false on a CPU)",
    )
    transfer: MeasuredCurve | None = Field(
        default=None, description="measured seconds of one copy of a size over this link"
    )
    alltoall: dict[int, MeasuredCurve] | None = Field(
        default=None,
        min_length=1,
        description="per world size: measured seconds of an all-to-all by bytes each rank sends",
    )
    provenance: Provenance


class LinksSpec(Frozen):
    nvlink: LinkSpec | None = Field(default=None, description="GPU-GPU inside a node (switched)")
    host: LinkSpec = Field(description="PCIe between a GPU and host memory")
    network: LinkSpec | None = Field(default=None, description="NIC bandwidth per GPU across nodes")


class HostSpec(Frozen):
    cpu: str
    memory: Bytes
    provenance: Provenance


class HardwareProfile(Frozen):
    name: str = Field(min_length=1)
    description: str = ""
    compute: ComputeSpec
    memory: MemorySpec
    links: LinksSpec
    host: HostSpec
