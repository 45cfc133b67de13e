"""The scheduling side of a serving reference run, the same on every rank: each GPU's
attention group with its queue and paged KV blocks, the scheduler's plans, and a log of what
each step did (the parent turns it into request timestamps).

Requests go to groups round robin in arrival order, as the simulator gives them out. Every
rank keeps every group's state and plans all of them with the same policy code, so the ranks
agree on each step without exchanging plans: they only need the same arrivals and clock
reading (real time) or the same recorded plans (replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.config import SCHEDULER, Scenario
from moesim.policies import KVBlocks, ServingState, StepOutcome, StepPlan, advance
from moesim.workload import Requests

__all__ = ["Engine", "StepLog", "shifted"]

_HAIR_S = 1e-9  # past a scheduler's timeout, so that rounding cannot leave the wait short


@dataclass
class StepLog:
    """Per step: the requests it scheduled for the first time, that emitted a token, their
    first, and that finished; its prefill and decode tokens, sequences, requests left waiting
    and KV blocks held once applied."""

    scheduled: list[np.ndarray] = field(default_factory=list)
    emitted: list[np.ndarray] = field(default_factory=list)
    first_token: list[np.ndarray] = field(default_factory=list)
    finished: list[np.ndarray] = field(default_factory=list)
    rows: list[list[int]] = field(default_factory=list)


def shifted(plan: StepPlan, steps: int) -> StepPlan:
    """``plan`` ``steps`` steps into its decode stretch: each context ``steps`` longer."""
    if steps == 0:
        return plan
    return StepPlan(
        plan.request, plan.new_tokens, plan.context + steps, plan.is_prefill, plan.preempted
    )


class Engine:
    """Every group's ``ServingState`` under the scenario's scheduler; ``apply`` logs a step."""

    def __init__(self, scenario: Scenario, requests: Requests, kv_blocks_G: np.ndarray) -> None:
        params = scenario.policies.scheduler
        self.scheduler = SCHEDULER.build(params)
        self.arrival_s = requests.arrival_s
        self.prompt_R, self.output_R = requests.prompt_tokens, requests.output_tokens
        self.groups = int(kv_blocks_G.size)
        self.group_R = np.arange(len(requests)) % self.groups
        self.states = [
            ServingState(self.prompt_R, self.output_R, KVBlocks(int(b), params.block_tokens))
            for b in kv_blocks_G
        ]
        self.arrived = 0
        self.done = 0
        self.started = np.zeros(len(requests), dtype=bool)
        self.log = StepLog()

    @property
    def total(self) -> int:
        return int(self.arrival_s.size)

    def arrive(self, count: int) -> None:
        """Requests up to ``count`` (by arrival) join their groups' queues."""
        arrived = np.arange(self.arrived, count)
        for group in range(self.groups):
            mine = arrived[self.group_R[arrived] == group]
            if mine.size:
                self.states[group].arrive(mine)
        self.arrived = max(self.arrived, count)

    def arrive_planned(self, plans: list[StepPlan]) -> None:
        """Replay: the planned requests that have not arrived yet arrive now."""
        planned = np.concatenate([p.request for p in plans])
        self.arrive(max(self.arrived, int(planned.max(initial=-1)) + 1))

    def _waits(self, now_s: float) -> list[float]:
        return [
            float(now_s - self.arrival_s[s.waiting[0]]) if s.waiting.size else 0.0
            for s in self.states
        ]

    def plan(self, now_s: float) -> list[StepPlan]:
        """Each group's next step at ``now_s`` seconds into the run."""
        waits = self._waits(now_s)
        return [self.scheduler.plan(s, w) for s, w in zip(self.states, waits, strict=True)]

    def wake_s(self, now_s: float) -> float:
        """When an idle engine plans again: the next arrival or a scheduler's timeout (inf:
        never, nothing is left to arrive and no timeout runs)."""
        waits = self._waits(now_s)
        admits = [self.scheduler.admit_in_s(s, w) for s, w in zip(self.states, waits, strict=True)]
        soonest = min((a for a in admits if a is not None), default=np.inf)
        arrival = self.arrival_s[self.arrived] if self.arrived < self.total else np.inf
        return float(min(arrival, now_s + max(soonest, 0.0) + _HAIR_S))

    def apply(self, plans: list[StepPlan]) -> list[StepOutcome]:
        """Apply one step's plans to the groups and log what it did."""
        request = np.concatenate([p.request for p in plans])
        fresh = request[~self.started[request]]
        self.started[fresh] = True
        outcomes = [advance(s, p) for s, p in zip(self.states, plans, strict=True)]
        log = self.log
        log.scheduled.append(fresh)
        for name in ("emitted", "first_token", "finished"):
            getattr(log, name).append(np.concatenate([getattr(o, name) for o in outcomes]))
        self.done += log.finished[-1].size
        log.rows.append(
            [
                sum(p.prefill_tokens for p in plans),
                sum(p.decode_tokens for p in plans),
                int(request.size),
                sum(s.waiting.size for s in self.states),
                sum(s.kv.used_blocks for s in self.states),
            ]
        )
        return outcomes
