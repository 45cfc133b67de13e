"""Building a scheduler's step plan: KV blocks taken in priority order, preemption by recompute.

Running requests take their KV in the order a scheduler offers them; one that does not fit
preempts the newest running request not yet scheduled, or itself when none is left (vLLM's
recompute order). Waiting requests are admitted as a prefix of the queue (``leading_fit``).
"""

from __future__ import annotations

import numpy as np

from moesim.policies.scheduler_state import ServingState, StepPlan

__all__ = ["PlanBuilder", "leading_fit"]


class PlanBuilder:
    """A plan under construction: blocks still free, tokens and sequences taken, preemptions."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.free_blocks = state.kv.free_blocks
        self.tokens = 0
        self.sequences = state.running.size
        self._parts: list[tuple[np.ndarray, np.ndarray, bool]] = []
        self._open = np.ones(state.running.size, dtype=bool)  # neither scheduled nor preempted
        self._preempted = np.zeros(state.running.size, dtype=bool)

    @property
    def preempting(self) -> bool:
        return bool(self._preempted.any())

    def running(self, requests: np.ndarray, new_tokens: np.ndarray, prefill: bool) -> None:
        """Schedule running ``requests`` (priority order), preempting where KV runs out."""
        state = self.state
        if not self._open.all():  # only those not preempted meanwhile
            offered = self._members(state.running[self._open])[requests]
            requests, new_tokens = requests[offered], new_tokens[offered]
        need = state.kv.needed(requests, state.context_R[requests] + new_tokens)
        if need.sum() <= self.free_blocks:
            self._open &= ~self._members(requests)[state.running]
            self._take(requests, new_tokens, prefill, int(need.sum()))
            return
        position = {int(r): i for i, r in enumerate(state.running)}
        kept = np.zeros(requests.size, dtype=bool)
        for row, request in enumerate(requests):
            slot = position[int(request)]
            if not self._open[slot]:
                continue  # preempted for an older request of this call
            self._open[slot] = False
            while need[row] > self.free_blocks:
                newest = np.flatnonzero(self._open)
                victim = newest[-1] if newest.size else slot
                self._preempt(victim)
                if victim == slot:
                    break
            else:
                self.free_blocks -= int(need[row])
                kept[row] = True
        self._take(requests[kept], new_tokens[kept], prefill, 0)

    def admit(self, requests: np.ndarray, new_tokens: np.ndarray, reserve_blocks: int) -> None:
        """Schedule waiting ``requests`` whose blocks (with the reserve) were checked free."""
        self.free_blocks -= reserve_blocks
        self.sequences += requests.size
        self._take(requests, new_tokens, True, 0)

    def plan(self) -> StepPlan:
        state = self.state
        preempted = state.running[self._preempted]
        if not self._parts:
            empty = np.zeros(0, dtype=np.int64)
            return StepPlan(empty, empty, empty, np.zeros(0, dtype=bool), preempted)
        request = np.concatenate([part[0] for part in self._parts])
        return StepPlan(
            request=request,
            new_tokens=np.concatenate([part[1] for part in self._parts]),
            context=state.context_R[request],
            is_prefill=np.concatenate([np.full(p[0].size, p[2]) for p in self._parts]),
            preempted=preempted,
        )

    def _take(
        self, requests: np.ndarray, new_tokens: np.ndarray, prefill: bool, blocks: int
    ) -> None:
        self.free_blocks -= blocks
        self.tokens += int(new_tokens.sum())
        if requests.size:
            self._parts.append((requests, new_tokens.astype(np.int64), prefill))

    def _members(self, requests: np.ndarray) -> np.ndarray:
        """A mask over request ids, set at ``requests`` (a set test without sorting)."""
        member_R = np.zeros(self.state.prompt_tokens_R.size, dtype=bool)
        member_R[requests] = True
        return member_R

    def _preempt(self, slot: int) -> None:
        self._open[slot] = False
        self._preempted[slot] = True
        self.free_blocks += int(self.state.kv.held(self.state.running[slot]))
        self.sequences -= 1


def leading_fit(tokens: np.ndarray, blocks: np.ndarray, budget: float, free_blocks: int) -> int:
    """How many leading requests fit ``budget`` tokens and ``free_blocks`` blocks together."""
    fits = (np.cumsum(tokens) <= budget) & (np.cumsum(blocks) <= free_blocks)
    return int(np.argmin(fits)) if not fits.all() else fits.size
