"""Policies decide, the simulator and the reference executor time: gating, placement, cache,
scheduler.

Importing this package registers every built-in policy in the config registries.
"""

from moesim.policies import overlap as _overlap  # noqa: F401  (registers the overlap policies)
from moesim.policies import planners as _planners  # noqa: F401  (registers the planners)
from moesim.policies import scheduler as _scheduler  # noqa: F401  (registers the schedulers)
from moesim.policies.buffers import (
    CacheCounters,
    buffered_stacks,
    build_caches,
    request_sequences,
)
from moesim.policies.cache import CacheParams, ExpertCache, StepAccess
from moesim.policies.gating import (
    DynamicGating,
    GatingOutcome,
    StaticGating,
    expert_counts,
    static_capacity,
)
from moesim.policies.history import plan_placement, warmup_steps
from moesim.policies.kv_blocks import KVBlocks, KVOverflow
from moesim.policies.placement import PlacementPlan, contiguous_plan, load_eplb, save_eplb
from moesim.policies.planners import PlannerParams, balanced_slots, pearson
from moesim.policies.scheduler import Scheduler, SchedulerParams
from moesim.policies.scheduler_state import (
    ServingState,
    StepOutcome,
    StepPlan,
    advance,
    decode_stretch,
)

__all__ = [
    "CacheCounters",
    "CacheParams",
    "DynamicGating",
    "ExpertCache",
    "GatingOutcome",
    "KVBlocks",
    "KVOverflow",
    "PlacementPlan",
    "PlannerParams",
    "Scheduler",
    "SchedulerParams",
    "ServingState",
    "StaticGating",
    "StepAccess",
    "StepOutcome",
    "StepPlan",
    "advance",
    "balanced_slots",
    "buffered_stacks",
    "build_caches",
    "contiguous_plan",
    "decode_stretch",
    "expert_counts",
    "load_eplb",
    "pearson",
    "plan_placement",
    "request_sequences",
    "save_eplb",
    "static_capacity",
    "warmup_steps",
]
