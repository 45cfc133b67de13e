"""Each attention group's next plan, replanned only where something in the group changed.

A group's plan of decodes repeats, contexts one longer each step, for ``decode_stretch`` steps
(its contract: up to the first finish and while the free KV blocks cover what the decodes grow
into; only an arrival changes it earlier). After a stretch of fewer steps than that, and
without an arrival, the scheduler would plan the same requests again: the plan is reused with
its contexts advanced. A group with nothing to do keeps its empty plan until an arrival. Every
other group (a prefill, a preemption, a finish, a KV block limit, a queue that may admit on a
timeout) is planned afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from moesim.policies import Scheduler, ServingState, StepPlan, decode_stretch

__all__ = ["Planner"]

_IDLE = np.iinfo(np.int64).max  # steps an idle group's empty plan lasts: until an arrival


class Planner:
    """The plans of every group; ``arrived`` and ``ran`` tell it what changed."""

    def __init__(self, scheduler: Scheduler, states: list[ServingState]) -> None:
        self.scheduler, self.states = scheduler, states
        self._plans: list[StepPlan | None] = [None] * len(states)
        self._left = np.zeros(len(states), dtype=np.int64)  # steps each plan still repeats

    def plans(self, oldest_wait: Callable[[ServingState], float]) -> tuple[list[StepPlan], int]:
        """Every group's plan and the steps they all repeat; ``oldest_wait(state)``: how long
        the head of a group's queue has waited."""
        plans = []
        for group, state in enumerate(self.states):
            plan = self._plans[group]
            if plan is None:
                plan = self.scheduler.plan(state, oldest_wait(state))
                self._left[group] = _IDLE if state.idle else decode_stretch(state, plan)
                # a queue that may admit later (a timeout) is planned again, never kept
                self._plans[group] = None if plan.empty and not state.idle else plan
            plans.append(plan)
        return plans, int(self._left.min())

    def arrived(self, group: int) -> None:
        self._plans[group] = None

    def ran(self, steps: int) -> None:
        """The groups ran ``steps`` steps of their plans."""
        for group, plan in enumerate(self._plans):
            if plan is None or self._left[group] == _IDLE:
                continue
            if steps >= self._left[group]:  # a prefill, preemption or empty queue lasts 1
                self._plans[group] = None
            else:
                self._plans[group] = replace(plan, context=plan.context + steps)
                self._left[group] -= steps
