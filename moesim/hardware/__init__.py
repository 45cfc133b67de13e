"""Cost functions (compute, memory, links) and the cluster topology as a networkx graph."""

from moesim.hardware.costs import (
    DeviceCosts,
    allreduce_time,
    alltoall_port_time,
    port_time_is_monotone,
    transfer_time,
)
from moesim.hardware.topology import KINDS, Topology, build_topology

__all__ = [
    "KINDS",
    "DeviceCosts",
    "Topology",
    "allreduce_time",
    "alltoall_port_time",
    "build_topology",
    "port_time_is_monotone",
    "transfer_time",
]
