"""The step stream of a scenario: chunks of steps, each with its routing, drawn in bulk.

Shapes: ``N`` steps in a chunk, ``L`` MoE layers of the phase's stack, ``T`` tokens per step,
``K`` top-k, ``G`` GPUs. Tokens are split over GPUs in contiguous, equal (±1) chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario, SyntheticRouting
from moesim.workload.synthetic import SyntheticRouter
from moesim.workload.trace import load_trace, recut

__all__ = ["StepChunk", "chunk_steps", "routing_chunks", "tokens_per_gpu"]

_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class StepChunk:
    """Consecutive steps ``first_step .. first_step + N - 1`` and their routing."""

    first_step: int
    expert_ids_NLTK: np.ndarray

    @property
    def steps(self) -> int:
        return self.expert_ids_NLTK.shape[0]


def tokens_per_gpu(tokens: int, gpus: int) -> np.ndarray:
    """``S_G``: tokens on each GPU, contiguous equal chunks (the first ones get the remainder)."""
    base, extra = divmod(tokens, gpus)
    return base + (np.arange(gpus) < extra).astype(np.int64)


def chunk_steps(scenario: Scenario) -> int:
    """Steps per chunk: about 2M assignments or (layer, expert) cells, whichever is more."""
    model = scenario.model
    layers = model.moe_layers(scenario.stack())
    per_step = max(
        1, layers * max(scenario.workload.tokens_per_step * model.top_k, model.num_experts)
    )
    return int(min(scenario.workload.steps, max(1, _CHUNK_ELEMENTS // per_step)))


def routing_chunks(scenario: Scenario, rng: np.random.Generator) -> Iterator[StepChunk]:
    """Yield the run's steps in chunks; synthetic routing is drawn from ``rng``."""
    model, workload = scenario.model, scenario.workload
    layers = model.moe_layers(scenario.stack())
    tokens, steps = workload.tokens_per_step, workload.steps
    per_chunk = chunk_steps(scenario)
    routing = workload.routing
    if layers == 0:
        for first in range(0, steps, per_chunk):
            n = min(per_chunk, steps - first)
            yield StepChunk(first, np.zeros((n, 0, tokens, model.top_k), dtype=np.int16))
        return
    if isinstance(routing, SyntheticRouting):
        router = SyntheticRouter(routing, model.num_experts, model.top_k, layers, rng)
        for first in range(0, steps, per_chunk):
            yield StepChunk(first, router.draw(min(per_chunk, steps - first), tokens))
        return
    trace = load_trace(routing.path, model.num_experts, model.top_k, layers)
    ids = recut(trace, steps, tokens, routing.path)
    for first in range(0, steps, per_chunk):
        yield StepChunk(first, ids[first : first + per_chunk])
