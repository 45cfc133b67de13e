"""The step stream of a scenario: chunks of steps, each with its routing, drawn in bulk.

Shapes: ``N`` steps in a chunk, ``L`` MoE layers of the phase's stack, ``T`` tokens per step,
``K`` top-k, ``G`` GPUs. Tokens are split over GPUs in contiguous, equal (±1) chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario, SyntheticRouting
from moesim.workload.fit import fit_trace
from moesim.workload.synthetic import SyntheticRouter
from moesim.workload.trace import load_trace, recut

__all__ = [
    "StepChunk",
    "block_steps",
    "chunk_steps",
    "routing_chunks",
    "routing_rng",
    "tokens_per_gpu",
]

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


_BLOCK_STEPS = 64
_ROUTING_STREAM = 0  # spawn key of the routing stream under the scenario's seed


def routing_rng(scenario: Scenario, block: int) -> np.random.Generator:
    """The generator of block ``block`` of the routing stream (``block_steps`` steps each)."""
    key = (_ROUTING_STREAM, block)
    return np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=key))


def block_steps(scenario: Scenario) -> int:
    """Steps drawn together with one generator: at most 64, at most one chunk."""
    return min(_BLOCK_STEPS, chunk_steps(scenario))


def chunk_steps(scenario: Scenario) -> int:
    """Steps per chunk: about 2M assignments or (layer, expert) cells, whichever is more."""
    model = scenario.model
    layers = model.moe_layers(scenario.stack())
    per_step = max(
        1, layers * max(scenario.workload.tokens_per_step * model.top_k, model.num_experts)
    )
    return int(max(1, _CHUNK_ELEMENTS // per_step))


def _stream(scenario: Scenario, start: int, total: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first, expert_ids_NLTK)`` chunks covering steps ``start .. total - 1``."""
    model, workload = scenario.model, scenario.workload
    layers = model.moe_layers(scenario.stack())
    tokens = workload.tokens_per_step
    per_chunk = chunk_steps(scenario)
    routing = workload.routing
    if layers == 0:
        for first in range(start, total, per_chunk):
            n = min(per_chunk, total - first)
            yield first, np.zeros((n, 0, tokens, model.top_k), dtype=np.int16)
    elif isinstance(routing, SyntheticRouting):
        # Whole blocks with their own generators: step n's routing never depends on the window.
        # A block before the window only moves the rankings on (they carry across blocks).
        block = block_steps(scenario)
        fitted = {}
        if routing.fit is not None:  # per-layer skew and locality that look like the trace
            skew_L, locality_L = fit_trace(routing.fit, model.num_experts, model.top_k, layers)
            fitted = {"skew_L": skew_L, "locality_L": locality_L}
        router = SyntheticRouter(
            routing, model.num_experts, model.top_k, layers, routing_rng(scenario, 0), **fitted
        )
        for index, first in enumerate(range(0, total, block)):
            router.reseed(routing_rng(scenario, index))
            if first + block <= start:
                router.rankings(block)
            else:
                yield first, router.draw(block, tokens)[: total - first]
    else:
        trace = load_trace(routing.path, model.num_experts, model.top_k, layers)
        ids = recut(trace, total, tokens, routing.path, model.num_experts)
        for first in range(start, total, per_chunk):
            yield first, ids[first : first + per_chunk]


def routing_chunks(
    scenario: Scenario, start: int = 0, steps: int | None = None
) -> Iterator[StepChunk]:
    """Steps ``start .. start + steps - 1`` of the scenario's routing (``steps`` defaults to
    the workload's), numbered from 0; the same steps whatever ``start`` and chunking."""
    steps = scenario.workload.steps if steps is None else steps
    for first, ids in _stream(scenario, start, start + steps):
        lo, hi = max(start - first, 0), min(start + steps - first, ids.shape[0])
        if lo < hi:
            yield StepChunk(first + lo - start, ids[lo:hi])
