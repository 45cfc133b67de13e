"""The placement of a run: the planner learns from the warm-up window of the routing.

The first ``history_steps`` steps of the routing stream are the history a planner sees; the
measured steps follow them. With ``oracle: true`` the planner sees the measured steps instead.
Both the simulator and the reference executor place experts through ``plan_placement``.
"""

from __future__ import annotations

import numpy as np

from moesim.config import PLACEMENT, Scenario
from moesim.policies.gating import expert_counts
from moesim.policies.placement import PlacementPlan, contiguous_plan
from moesim.workload import routing_chunks

__all__ = ["plan_placement", "warmup_steps"]


def warmup_steps(scenario: Scenario) -> int:
    """Steps of routing drawn before the measured ones (the planner's history window)."""
    return scenario.policies.placement.history_steps


def plan_placement(scenario: Scenario) -> PlacementPlan:
    """The scenario's plan, learned from history (or, for an oracle, the measured steps)."""
    params = scenario.policies.placement
    model = scenario.model
    layers = model.moe_layers(scenario.stack())
    if layers == 0:
        return contiguous_plan(model.num_experts, scenario.cluster.gpus, 0)
    planner = PLACEMENT.build(params)
    if not getattr(planner, "learns", False):  # draws no history it would ignore
        return planner.plan(np.zeros((0, layers, model.num_experts)), scenario.cluster.gpus)
    warmup = warmup_steps(scenario)
    start, steps = (warmup, None) if params.oracle else (0, warmup)
    loads = [
        expert_counts(chunk.expert_ids_NLTK, model.num_experts)
        if chunk.counts_NLGE is None
        else chunk.counts_NLGE.sum(axis=2, dtype=np.int64)
        for chunk in routing_chunks(scenario, start, steps)
    ]
    load_HLE = np.concatenate(loads) if loads else np.zeros((0, layers, model.num_experts))
    return planner.plan(load_HLE, scenario.cluster.gpus)
