"""Cost functions (compute, memory, links) and the cluster topology as a networkx graph."""

from moesim.hardware.costs import DeviceCosts, transfer_time
from moesim.hardware.topology import KINDS, Topology, build_topology

__all__ = ["KINDS", "DeviceCosts", "Topology", "build_topology", "transfer_time"]
