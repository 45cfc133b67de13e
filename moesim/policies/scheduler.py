"""Serving schedulers: from the queues and the KV blocks to the next step's plan.

A scheduler sees a ``ServingState`` (queues, per-request progress, KV blocks), never the clock;
the loop passes the head request's wait where a policy needs it. ``plan`` decides, ``advance``
(in ``moesim.policies.serving_state``) applies.

- ``static``: fixed batches (the seed paper): ``batch_size`` requests (fewer once the oldest
  has waited ``timeout_s``; never without one), prefilled together, decoded until all finish.
- ``continuous``: iteration-level batching (Orca, vLLM): every running request decodes each
  step; whole prompts are admitted first come first served while ``max_sequences``,
  ``max_batch_tokens`` and free KV blocks allow.
- ``chunked``: Sarathi-Serve: decodes first, then prompt chunks of at most ``chunk_tokens``
  share the ``max_batch_tokens`` budget; a partial prompt continues before new ones start.

Adding a scheduler: one class with ``Params`` (deriving ``SchedulerParams``) and
``plan(state, oldest_wait_s)``, decorated ``@SCHEDULER.register``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.config import SCHEDULER, Policy, PolicyParams
from moesim.config.fields import Seconds

__all__ = ["BudgetParams", "Chunked", "Continuous", "SchedulerParams", "Static"]

MAX_TOKENS = 1 << 30  # a bound on any token count in a step, block or budget


class SchedulerParams(PolicyParams):
    """``block_tokens``: tokens per paged KV block (vLLM's default 16)."""

    block_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS)


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


@SCHEDULER.register("static")
class Static(Policy):
    class Params(SchedulerParams):
        name: Literal["static"] = "static"
        batch_size: int = Field(default=8, ge=1, le=MAX_TOKENS)
        timeout_s: Seconds | None = None  # None: wait for a full batch


@SCHEDULER.register("continuous")
class Continuous(Policy):
    class Params(BudgetParams):
        name: Literal["continuous"] = "continuous"


@SCHEDULER.register("chunked")
class Chunked(Policy):
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
