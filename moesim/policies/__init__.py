"""Policies decide, the simulator and the reference executor time: gating, placement.

Importing this package registers every built-in policy in the config registries.
"""

from moesim.policies.gating import (
    DynamicGating,
    GatingOutcome,
    StaticGating,
    expert_counts,
    static_capacity,
)
from moesim.policies.placement import PlacementPlan, contiguous_plan

__all__ = [
    "DynamicGating",
    "GatingOutcome",
    "PlacementPlan",
    "StaticGating",
    "contiguous_plan",
    "expert_counts",
    "static_capacity",
]
