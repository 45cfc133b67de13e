"""One pool's serving engine: its attention groups, scheduler and steps, as a SimPy process.

Every step runs across all of the pool's groups at once (an MoE layer waits for the slowest
group); its duration is the fixed-batch layer model on the plans' tokens (``serving_step``).
While every group only decodes, the plan repeats with contexts one longer each step: such a
stretch, up to the ``horizon`` (the next time a request may arrive), a finish or a KV block
it would need, is advanced with one SimPy timeout, its steps timed together.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np
import simpy

from moesim.config import SCHEDULER, Scenario
from moesim.metrics import StepRecords
from moesim.policies import StepOutcome, StepPlan, advance, plan_placement
from moesim.sim.layout import Layout
from moesim.sim.serving_groups import Groups, kv_cache, step_tokens
from moesim.sim.serving_plans import Planner
from moesim.sim.serving_router import Router
from moesim.sim.serving_step import Stepper, stretch
from moesim.workload import Requests

__all__ = ["Pool"]

_HAIR_S = 1e-9  # added to a scheduler's timeout wait
# (each group's plan, steps it runs): replaying these in order repeats the pool's work
PlanCallback = Callable[[list[StepPlan], int], None]
# (step start, its latencies, what it emitted): called once the steps have run
StepCallback = Callable[[float, np.ndarray, list[StepOutcome]], None]


class Pool:
    """``scenario`` (on the pool's cluster) serving ``requests``, of which ``expected``
    finish here; ``horizon()``: the next time a request may arrive (a stretch stops there)."""

    def __init__(
        self,
        scenario: Scenario,
        requests: Requests,
        env: simpy.Environment,
        horizon: Callable[[], float],
        expected: int,
    ) -> None:
        params = scenario.policies.scheduler
        self.scenario, self.env, self.horizon, self.expected = scenario, env, horizon, expected
        self.layout = Layout.of(scenario)
        self.plan = plan_placement(self.layout.view(scenario))
        self.kv = kv_cache(scenario, self.plan, requests)
        self.scheduler = SCHEDULER.build(params)
        self.groups = Groups(requests, self.kv.blocks_A, params.block_tokens)
        for state in self.groups.states:
            self.scheduler.check(state)
        most_rows = self.kv.blocks_A.size * step_tokens(scenario, requests)
        self.stepper = Stepper(scenario, self.groups, self.plan, most_rows)
        self.planner = Planner(self.scheduler, self.groups.states)
        self.router = Router(scenario.policies.router, self.groups.states)
        self.steps: list[StepRecords] = []
        self.events = 0
        self.busy_until: float | None = None  # the end of the stretch running
        self.before_plan: Callable[[], None] | None = None
        self.on_plans: PlanCallback | None = None
        self.on_steps: list[StepCallback] = []  # each called in turn
        self._wake = env.event()

    @property
    def gpus(self) -> int:
        return self.scenario.cluster.gpus

    def arrive(self, requests: np.ndarray) -> None:
        """Route ``requests`` (arrived now, in order) to groups and queue them there."""
        groups = self.groups
        chosen = self.router.route(requests)
        groups.group_R[requests] = chosen
        for group in np.unique(chosen):
            groups.states[group].arrive(requests[chosen == group])
            self.planner.arrived(int(group))
        self.wake()

    def changed(self, group: int) -> None:
        """Something outside the scheduler changed ``group`` (a request joined it)."""
        self.planner.arrived(group)
        self.wake()

    def wake(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    @property
    def idle(self) -> bool:
        return all(state.idle for state in self.groups.states)

    def run(self) -> Generator[simpy.Event, None, None]:
        """The pool's engine: plan, time and apply steps until ``expected`` requests finish."""
        env, groups, planner, scheduler = self.env, self.groups, self.planner, self.scheduler
        states = groups.states
        while groups.done < self.expected:
            if self.before_plan is not None:
                self.before_plan()
            plans, repeats = planner.plans(lambda state: groups.oldest_wait(state, env.now))
            if all(p.empty for p in plans):
                waits = [groups.oldest_wait(s, env.now) for s in states]
                admits = [scheduler.admit_in_s(s, w) for s, w in zip(states, waits, strict=True)]
                soonest = min((a for a in admits if a is not None), default=None)
                if self._wake.triggered:
                    self._wake = env.event()
                # a hair past the timeout, so that rounding cannot leave the wait just short
                later = [] if soonest is None else [env.timeout(max(soonest, 0.0) + _HAIR_S)]
                yield env.any_of([self._wake, *later])
                continue
            start = env.now
            shape = self.stepper.shape(plans)
            timed = stretch(self.stepper, shape, repeats, self.horizon() - start).records
            latency_n = timed.latency_s
            timed.start_s[:] = start + np.concatenate([[0.0], np.cumsum(latency_n)[:-1]])
            self.steps.append(timed)
            if self.on_plans is not None:
                self.on_plans(plans, latency_n.size)
            groups.schedule(plans, start)
            outcomes = [
                advance(s, p, latency_n.size)
                for s, p in zip(states, plans, strict=True)
                if not p.empty or p.preempted.size
            ]
            planner.ran(latency_n.size)
            prefill, decode = int(shape.prefill_G.sum()), int(shape.decode_G.sum())
            groups.record_queue(prefill, decode, plans, latency_n.size)
            self.busy_until = start + float(latency_n.sum())
            yield env.timeout(float(latency_n.sum()))
            self.busy_until = None
            self.events += 1
            groups.emit(start, latency_n, outcomes)
            for callback in self.on_steps:
                callback(start, latency_n, outcomes)

    def records(self) -> StepRecords:
        return StepRecords.concat(self.steps) if self.steps else StepRecords.empty(self.layers)

    @property
    def layers(self) -> int:
        return self.stepper.layers
