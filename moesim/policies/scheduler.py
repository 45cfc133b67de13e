"""Serving schedulers: from the queues and the KV blocks to the next step's plan.

A scheduler sees a ``ServingState`` (queues, per-request progress, KV blocks), never the clock;
the loop passes the head request's wait where a policy needs it. ``plan`` decides,
``scheduler_state.advance`` applies; ``check`` refuses, before serving, a request that no
plan could ever admit.

- ``static``: fixed batches (the seed paper): ``batch_size`` requests (fewer once the oldest
  has waited ``timeout_s``; never without one), prefilled together, decoded until all finish.
- ``continuous``: iteration-level batching (Orca, vLLM): every running request decodes each
  step; whole prompts are admitted first come first served while ``max_sequences``,
  ``max_batch_tokens`` and free KV blocks allow.
- ``chunked``: Sarathi-Serve: decodes first, then prompt chunks of at most ``chunk_tokens``
  share the ``max_batch_tokens`` budget; a partial prompt continues before new ones start.

Adding a scheduler: one class with ``Params`` (deriving ``SchedulerParams``) and
``plan(state, oldest_wait_s)`` (building it with ``PlanBuilder``), decorated
``@SCHEDULER.register``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from moesim.config import SCHEDULER, Policy, PolicyParams
from moesim.config.fields import Seconds
from moesim.errors import ConfigError
from moesim.policies.scheduler_builder import PlanBuilder, leading_fit
from moesim.policies.scheduler_state import ServingState, StepPlan

__all__ = ["BudgetParams", "Chunked", "Continuous", "Scheduler", "SchedulerParams", "Static"]

MAX_TOKENS = 1 << 30  # a bound on any token count in a step, block or budget


class SchedulerParams(PolicyParams):
    """``block_tokens``: tokens per paged KV block (vLLM's default 16); ``memory_fraction``:
    the share of device memory for weights, activations and the KV cache, which gets what the
    others leave (vLLM's ``gpu_memory_utilization``, default 0.9)."""

    block_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS)
    memory_fraction: float = Field(default=0.9, gt=0, le=1, allow_inf_nan=False)


class BudgetParams(SchedulerParams):
    """``max_sequences`` running at once; ``max_batch_tokens`` new tokens per step."""

    max_sequences: int = Field(default=256, ge=1, le=MAX_TOKENS)
    max_batch_tokens: int = Field(default=8192, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _budget(self) -> BudgetParams:
        if self.max_batch_tokens < self.block_tokens:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) is smaller than one KV block "
                f"(block_tokens: {self.block_tokens})"
            )
        if self.max_batch_tokens < self.max_sequences:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) is smaller than max_sequences "
                f"({self.max_sequences}): the running requests' decodes would not fit a step"
            )
        return self


class Scheduler(Policy):
    """Base of the schedulers: ``plan`` the next step; ``check`` the requests can be served."""

    def plan(self, state: ServingState, oldest_wait_s: float = 0.0) -> StepPlan:
        """The next step; ``oldest_wait_s``: how long the head of the waiting queue has
        waited (only ``static`` reads it)."""
        raise NotImplementedError

    def admit_in_s(self, state: ServingState, oldest_wait_s: float) -> float | None:
        """Seconds until an empty plan admits without a new arrival (None: only an arrival
        changes it)."""
        return None

    def check(self, state: ServingState) -> None:
        """Refuse requests that could never run: a KV peak beyond the whole cache (counting a
        recompute prefill after a preemption, which reserves one token more)."""
        kv = state.kv
        longest_R = state.prompt_tokens_R + state.output_tokens_R
        blocks_R = kv.blocks_for(longest_R)
        if blocks_R.size and blocks_R.max() > kv.total_blocks:
            worst = int(np.argmax(blocks_R))
            raise ConfigError(
                None,
                "workload.requests",
                f"request {worst} ({state.prompt_tokens_R[worst]} prompt + "
                f"{state.output_tokens_R[worst]} output tokens) needs {blocks_R[worst]} KV blocks "
                f"of {kv.block_tokens} tokens; the KV cache holds {kv.total_blocks}",
            )

    def _decodes(self, state: ServingState, builder: PlanBuilder) -> None:
        decoding = state.running[~state.prefilling(state.running)]
        builder.running(decoding, np.ones(decoding.size, dtype=np.int64), prefill=False)


@SCHEDULER.register("static")
class Static(Scheduler):
    class Params(SchedulerParams):
        name: Literal["static"] = "static"
        batch_size: int = Field(default=8, ge=1, le=MAX_TOKENS)
        timeout_s: Seconds | None = None  # None: wait for a full batch

    def plan(self, state: ServingState, oldest_wait_s: float = 0.0) -> StepPlan:
        builder = PlanBuilder(state)
        if state.running.size:
            self._decodes(state, builder)
        elif self._ready(state, oldest_wait_s):
            batch = state.waiting[: self.params.batch_size]
            prefill = state.prefill_tokens_R[batch]
            reserve = state.kv.blocks_for(prefill + 1)
            n = leading_fit(prefill, reserve, np.inf, builder.free_blocks)
            builder.admit(batch[:n], prefill[:n], int(reserve[:n].sum()))
        return builder.plan()

    def admit_in_s(self, state: ServingState, oldest_wait_s: float) -> float | None:
        timeout_s = self.params.timeout_s
        if state.running.size or not state.waiting.size or timeout_s is None:
            return None
        return None if self._ready(state, oldest_wait_s) else timeout_s - oldest_wait_s

    def _ready(self, state: ServingState, oldest_wait_s: float) -> bool:
        waiting, timeout_s = state.waiting.size, self.params.timeout_s
        if waiting >= self.params.batch_size:
            return True
        return waiting > 0 and timeout_s is not None and oldest_wait_s >= timeout_s


@SCHEDULER.register("continuous")
class Continuous(Scheduler):
    class Params(BudgetParams):
        name: Literal["continuous"] = "continuous"

    def plan(self, state: ServingState, oldest_wait_s: float = 0.0) -> StepPlan:
        builder = PlanBuilder(state)
        self._decodes(state, builder)
        room = self.params.max_sequences - builder.sequences
        if builder.preempting or room <= 0:
            return builder.plan()
        waiting = state.waiting[:room]
        prefill = state.prefill_tokens_R[waiting]
        reserve = state.kv.blocks_for(prefill + 1)
        left = self.params.max_batch_tokens - builder.tokens
        n = leading_fit(prefill, reserve, left, builder.free_blocks)
        builder.admit(waiting[:n], prefill[:n], int(reserve[:n].sum()))
        return builder.plan()

    def check(self, state: ServingState) -> None:
        """Also refuse a prefill beyond one step's tokens: the prompt, or after a preemption
        the prompt and the output but its last token (vLLM asks the same of max_model_len)."""
        super().check(state)
        longest_R = state.prompt_tokens_R + state.output_tokens_R - 1
        budget = self.params.max_batch_tokens
        if longest_R.size and longest_R.max() > budget:
            worst = int(np.argmax(longest_R))
            raise ConfigError(
                None,
                "policies.scheduler.max_batch_tokens",
                f"{budget} tokens a step, but request {worst} may prefill {longest_R[worst]} "
                "at once (its prompt and output but one, recomputed after a preemption); "
                "raise it or use the chunked scheduler",
            )


@SCHEDULER.register("chunked")
class Chunked(Scheduler):
    class Params(BudgetParams):
        name: Literal["chunked"] = "chunked"
        chunk_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS)

        @model_validator(mode="after")
        def _chunk(self) -> Chunked.Params:
            if self.chunk_tokens > self.max_batch_tokens:
                raise ValueError(
                    f"chunk_tokens ({self.chunk_tokens}) is larger than max_batch_tokens "
                    f"({self.max_batch_tokens})"
                )
            return self

    def plan(self, state: ServingState, oldest_wait_s: float = 0.0) -> StepPlan:
        p = self.params
        builder = PlanBuilder(state)
        self._decodes(state, builder)
        for request in state.running[state.prefilling(state.running)]:
            left = p.max_batch_tokens - builder.tokens
            if left <= 0:
                break
            rest = state.prefill_tokens_R[request] - state.context_R[request]
            chunk = np.array([min(rest, p.chunk_tokens, left)])
            builder.running(np.array([request]), chunk, prefill=True)
        room = p.max_sequences - builder.sequences
        left = p.max_batch_tokens - builder.tokens
        if builder.preempting or room <= 0 or left <= 0:
            return builder.plan()
        waiting = state.waiting[:room]
        prefill = state.prefill_tokens_R[waiting]
        chunk = np.minimum(prefill, p.chunk_tokens)
        reserve = state.kv.blocks_for(chunk + (chunk == prefill))
        n = leading_fit(chunk, reserve, left, builder.free_blocks)
        if n < waiting.size:  # the next one takes the budget left, if that is what stopped it
            part = left - int(chunk[:n].sum())
            blocks = int(reserve[:n].sum()) + state.kv.blocks_for(part)
            if 0 < part < chunk[n] and blocks <= builder.free_blocks:
                chunk[n], reserve[n], n = part, state.kv.blocks_for(part), n + 1
        builder.admit(waiting[:n], chunk[:n], int(reserve[:n].sum()))
        return builder.plan()
