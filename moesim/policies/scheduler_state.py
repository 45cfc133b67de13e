"""What a serving scheduler sees and returns: the queues, a step's plan, what the step emitted.

Shapes: ``R`` requests (columns indexed by request id; a plan's arrays hold one row per
planned request). Token accounting follows vLLM: a request's KV holds its ``context``; a
prefill feeds prompt tokens (in chunks or whole) and the step that completes the prompt emits
the first output token; each decode feeds the last token and emits the next; a request
finishes when it has emitted ``output_tokens`` (its last token is never fed), so its KV peaks
at ``prompt + output - 1`` tokens. Preemption is by recompute: the blocks are freed and the
prompt plus the tokens generated so far are prefilled again (emitting the next token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from moesim.policies.kv_blocks import KVBlocks

__all__ = ["ServingState", "StepOutcome", "StepPlan", "advance", "decode_stretch"]

_NONE = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class StepPlan:
    """One step of one attention group: ``request`` ids, their ``new_tokens`` (a prefill chunk
    or 1 for a decode), ``context`` (tokens in their KV before the step) and ``is_prefill``,
    all of shape (R,); ``preempted``: ids preempted by this step (before it runs)."""

    request: np.ndarray
    new_tokens: np.ndarray
    context: np.ndarray
    is_prefill: np.ndarray
    preempted: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.new_tokens.sum())

    @property
    def prefill_tokens(self) -> int:
        return int(self.new_tokens[self.is_prefill].sum())

    @property
    def decode_tokens(self) -> int:
        return int(np.count_nonzero(~self.is_prefill))

    @property
    def empty(self) -> bool:
        return self.request.size == 0


@dataclass(frozen=True)
class StepOutcome:
    """Ids that emitted one token in each step applied (``emitted``), that emitted their first
    (``first_token``, in the first step) and that finished (``finished``, in the last step)."""

    emitted: np.ndarray
    first_token: np.ndarray
    finished: np.ndarray


class ServingState:
    """Requests of one attention group: per-id columns, the ``waiting`` FIFO and the
    ``running`` ids in admission order, and the KV blocks. The loop calls ``arrive``; a
    scheduler's ``plan`` reads it and ``advance`` changes it."""

    def __init__(self, prompt_tokens_R: ArrayLike, output_tokens_R: ArrayLike, kv: KVBlocks):
        self.prompt_tokens_R = np.asarray(prompt_tokens_R, dtype=np.int64)
        self.output_tokens_R = np.asarray(output_tokens_R, dtype=np.int64)
        if self.prompt_tokens_R.shape != self.output_tokens_R.shape:
            raise ValueError("prompt_tokens_R and output_tokens_R differ in length")
        if np.any(self.prompt_tokens_R < 1) or np.any(self.output_tokens_R < 1):
            raise ValueError("every request needs a prompt and output of at least one token")
        self.kv = kv
        size = self.prompt_tokens_R.size
        # tokens to prefill: the prompt, plus what was generated before the last preemption
        self.prefill_tokens_R = self.prompt_tokens_R.copy()
        self.context_R = np.zeros(size, dtype=np.int64)
        self.generated_R = np.zeros(size, dtype=np.int64)
        self.preemptions_R = np.zeros(size, dtype=np.int64)
        self.waiting = _NONE
        self.running = _NONE

    def arrive(self, requests: ArrayLike) -> None:
        """Append arrived ids to the back of the waiting queue."""
        self.waiting = np.concatenate([self.waiting, np.atleast_1d(requests).astype(np.int64)])

    def resume(self, requests: ArrayLike) -> None:
        """Start decoding ``requests`` whose prompt's KV arrived from a prefill pool, with
        their first token emitted there: their KV holds the prompt (and room for the first
        token, reserved before the transfer) and they run from their next decode."""
        ids = np.atleast_1d(requests).astype(np.int64)
        prompt = self.prompt_tokens_R[ids]
        self.kv.grow(ids, prompt + 1)
        self.context_R[ids] = prompt
        self.generated_R[ids] = 1
        self.running = np.concatenate([self.running, ids])

    @property
    def idle(self) -> bool:
        return self.waiting.size == 0 and self.running.size == 0

    def prefilling(self, requests: np.ndarray) -> np.ndarray:
        """Which of ``requests`` still have prompt tokens to prefill."""
        return self.context_R[requests] < self.prefill_tokens_R[requests]


def advance(state: ServingState, plan: StepPlan, steps: int = 1) -> StepOutcome:
    """Apply ``plan`` (``steps`` times for a decode stretch, see ``decode_stretch``): preempt,
    admit, allocate KV, make progress, emit tokens, finish and free."""
    request = plan.request
    if request.size and not (state.context_R[request] == plan.context).all():
        raise RuntimeError("step plan applied to a state it was not planned from")
    prefills = bool(plan.is_prefill.any())
    if steps > 1 and (prefills or plan.preempted.size):
        raise RuntimeError("only a plan of decodes without preemptions repeats")
    preempted = plan.preempted
    if preempted.size:
        state.kv.free(preempted)
        state.running = state.running[~np.isin(state.running, preempted)]
        state.prefill_tokens_R[preempted] = (
            state.prompt_tokens_R[preempted] + state.generated_R[preempted]
        )
        state.context_R[preempted] = 0
        state.preemptions_R[preempted] += 1
        state.waiting = np.concatenate([preempted, state.waiting])
    if prefills:  # only a prefill admits a request
        admitted = request[np.isin(request, state.waiting)]
        if admitted.size:
            state.waiting = state.waiting[~np.isin(state.waiting, admitted)]
            state.running = np.concatenate([state.running, admitted])
    new_tokens = plan.new_tokens * steps
    state.kv.grow(request, plan.context + new_tokens)
    state.context_R[request] += new_tokens
    emitted = request[~plan.is_prefill | ~state.prefilling(request)] if prefills else request
    generated = state.generated_R[emitted]
    first_token = emitted[generated == 0]
    generated += steps
    state.generated_R[emitted] = generated
    over = generated - state.output_tokens_R[emitted]
    finished = emitted[over >= 0]
    if over.size and over.max() > 0:
        raise RuntimeError("a decode stretch ran past a request's last token")
    if finished.size:
        state.kv.free(finished)
        state.running = state.running[~np.isin(state.running, finished)]
    return StepOutcome(emitted=emitted, first_token=first_token, finished=finished)


def decode_stretch(state: ServingState, plan: StepPlan) -> int:
    """Steps that ``plan`` repeats with contexts one longer each: up to the first finish, and
    while the free KV blocks cover the blocks its requests cross into (1 for a plan with
    prefills or preemptions). A scheduler's plan stays the same over such a stretch unless a
    request arrives (the loop ends the stretch there)."""
    if plan.empty or plan.is_prefill.any() or plan.preempted.size:
        return 1
    request = plan.request
    last = int((state.output_tokens_R[request] - state.generated_R[request]).min())
    held_tokens = state.kv.held(request) * state.kv.block_tokens

    def extra_blocks(steps: int) -> int:
        over = plan.context + steps - held_tokens
        return int(state.kv.blocks_for(np.maximum(over, 0)).sum())

    low, high = 1, last  # extra_blocks(1) fits: the plan was feasible
    while low < high:
        mid = (low + high + 1) // 2
        if extra_blocks(mid) <= state.kv.free_blocks:
            low = mid
        else:
            high = mid - 1
    return low
