"""The step stream of a scenario: chunks of steps, each with its routing, drawn in bulk.

Shapes: ``N`` steps in a chunk, ``L`` MoE layers of the phase's stack, ``T`` tokens per step,
``K`` top-k, ``G`` GPUs, ``E`` experts. Tokens are split over GPUs in contiguous, equal (±1)
chunks. A chunk holds its routing at one of two resolutions (``Scenario.routing_resolution``):
each token's experts, ``expert_ids_NLTK``, or each source GPU's tokens per expert,
``counts_NLGE`` (synthetic routing only, drawn directly by ``counts.CountRouter``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario, SyntheticRouting
from moesim.workload.counts import CountRouter, choice_law
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
    """Consecutive steps ``first_step .. first_step + N - 1`` and their routing: exactly one
    of ``expert_ids_NLTK`` and ``counts_NLGE`` is set."""

    first_step: int
    expert_ids_NLTK: np.ndarray | None = None
    counts_NLGE: np.ndarray | None = None

    @property
    def routing(self) -> np.ndarray:
        return self.expert_ids_NLTK if self.counts_NLGE is None else self.counts_NLGE

    @property
    def steps(self) -> int:
        return self.routing.shape[0]


def tokens_per_gpu(tokens: int, gpus: int) -> np.ndarray:
    """``S_G``: tokens on each GPU, contiguous equal chunks (the first ones get the remainder)."""
    base, extra = divmod(tokens, gpus)
    return base + (np.arange(gpus) < extra).astype(np.int64)


_BLOCK_STEPS = 64
_ROUTING_STREAM = 0  # spawn key of the routing stream under the scenario's seed
_LAW_STREAM = 2  # spawn key of the Monte Carlo that tabulates the count-level law


def routing_rng(scenario: Scenario, block: int) -> np.random.Generator:
    """The generator of block ``block`` of the routing stream (``block_steps`` steps each)."""
    key = (_ROUTING_STREAM, block)
    return np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=key))


def block_steps(scenario: Scenario, resolution: str | None = None) -> int:
    """Steps drawn together with one generator: at most 64, at most one chunk."""
    return min(_BLOCK_STEPS, chunk_steps(scenario, resolution))


def chunk_steps(scenario: Scenario, resolution: str | None = None) -> int:
    """Steps per chunk: about 2M assignments, (layer, GPU, expert) counts or (layer, expert)
    cells, whichever the resolution holds and is more."""
    model = scenario.model
    layers = model.moe_layers(scenario.stack())
    if (resolution or scenario.routing_resolution()) == "counts":
        cells = scenario.cluster.gpus * model.num_experts
    else:
        cells = max(scenario.workload.tokens_per_step * model.top_k, model.num_experts)
    return int(max(1, _CHUNK_ELEMENTS // max(1, layers * cells)))


def _stream(
    scenario: Scenario, start: int, total: int, resolution: str
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first, routing)`` chunks covering steps ``start .. total - 1``: ``expert_ids_NLTK``,
    or ``counts_NLGE`` at count resolution."""
    model, workload = scenario.model, scenario.workload
    layers = model.moe_layers(scenario.stack())
    tokens = workload.tokens_per_step
    per_chunk = chunk_steps(scenario, resolution)
    routing = workload.routing
    if layers == 0:
        gpus = scenario.cluster.gpus
        for first in range(start, total, per_chunk):
            n = min(per_chunk, total - first)
            if resolution == "counts":
                yield first, np.zeros((n, 0, gpus, model.num_experts), dtype=np.int32)
            else:
                yield first, np.zeros((n, 0, tokens, model.top_k), dtype=np.int16)
    elif isinstance(routing, SyntheticRouting):
        # Whole blocks with their own generators: step n's routing never depends on the window.
        # A block before the window only moves the rankings on (they carry across blocks).
        block = block_steps(scenario, resolution)
        fitted = {}
        if routing.fit is not None:  # per-layer skew and locality that look like the trace
            skew_L, locality_L = fit_trace(routing.fit, model.num_experts, model.top_k, layers)
            fitted = {"skew_L": skew_L, "locality_L": locality_L}

        def router(rng: np.random.Generator) -> SyntheticRouter:
            return SyntheticRouter(routing, model.num_experts, model.top_k, layers, rng, **fitted)

        tokens_router = router(routing_rng(scenario, 0))
        draw = functools.partial(tokens_router.draw, tokens=tokens)
        if resolution == "counts":
            law = choice_law(router(_law_rng(scenario)))
            gpus = scenario.cluster.gpus
            draw = CountRouter(tokens_router, tokens_per_gpu(tokens, gpus), law).draw
        for index, first in enumerate(range(0, total, block)):
            tokens_router.reseed(routing_rng(scenario, index))
            if first + block <= start:
                tokens_router.rankings(block)
            else:
                yield first, draw(block)[: total - first]
    else:
        trace = load_trace(routing.path, model.num_experts, model.top_k, layers)
        ids = recut(trace, total, tokens, routing.path, model.num_experts)
        for first in range(start, total, per_chunk):
            yield first, ids[first : first + per_chunk]


def _law_rng(scenario: Scenario) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(scenario.seed, spawn_key=(_LAW_STREAM,)))


def routing_chunks(
    scenario: Scenario, start: int = 0, steps: int | None = None, resolution: str | None = None
) -> Iterator[StepChunk]:
    """Steps ``start .. start + steps - 1`` of the scenario's routing (``steps`` defaults to
    the workload's), numbered from 0; the same steps whatever ``start`` and chunking.
    ``resolution`` (default: the scenario's) forces ``tokens`` or ``counts``."""
    steps = scenario.workload.steps if steps is None else steps
    resolution = resolution or scenario.routing_resolution()
    for first, routing in _stream(scenario, start, start + steps, resolution):
        lo, hi = max(start - first, 0), min(start + steps - first, routing.shape[0])
        if lo < hi:
            part = routing[lo:hi]
            if resolution == "counts":
                yield StepChunk(first + lo - start, counts_NLGE=part)
            else:
                yield StepChunk(first + lo - start, expert_ids_NLTK=part)
