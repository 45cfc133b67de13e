"""The caches of a buffered run, one per (GPU, MoE layer), built the same way for the
simulator and the reference executor: a seeded generator per cache, ``warm`` preloading and,
for ``belady``, the whole request sequence it reads ahead."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import CACHE, Scenario
from moesim.policies.cache import ExpertCache
from moesim.policies.placement import PlacementPlan

__all__ = ["CacheCounters", "buffered_stacks", "build_caches", "request_sequences"]

Requests = dict[tuple[int, int], list[np.ndarray]]


@dataclass
class CacheCounters:
    """A step's cache counters over every (GPU, buffered layer): requests that hit or missed,
    evictions, and expert copies (misses and prefetches)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    copies: int = 0


def buffered_stacks(scenario: Scenario) -> set[str]:
    """The layer stacks whose MoE layers keep only ``slots_per_layer`` experts per GPU."""
    cache = scenario.policies.cache
    if cache.name == "none":
        return set()
    stacks = set(scenario.model.stacks())
    return stacks if cache.layers == "all" else stacks & {cache.layers}


def request_sequences(needed_NLU: np.ndarray, plan: PlacementPlan) -> Requests:
    """Per (GPU, layer): the list of each step's requested slots, ascending."""
    sequences: Requests = {}
    for layer in range(needed_NLU.shape[1]):
        for gpu in range(plan.gpus):
            mine = np.flatnonzero(plan.owner_LU[layer] == gpu)
            sequences[gpu, layer] = [
                mine[needed_NLU[n, layer, mine]] for n in range(needed_NLU.shape[0])
            ]
    return sequences


def build_caches(
    scenario: Scenario, plan: PlacementPlan, future: Requests | None = None
) -> dict[tuple[int, int], ExpertCache]:
    """Empty (or, with ``warm``, preloaded) caches for every (GPU, layer) of ``plan``."""
    params = scenario.policies.cache
    policy = CACHE.build(params)
    caches = {}
    for gpu in range(plan.gpus):
        for layer in range(plan.layers):
            mine = np.flatnonzero(plan.owner_LU[layer] == gpu)
            ahead = None
            if future is not None:
                steps = future[gpu, layer]
                ahead = np.concatenate(steps) if steps else np.zeros(0, int)
            rng = np.random.default_rng(
                np.random.SeedSequence(scenario.seed, spawn_key=(1, gpu, layer))
            )
            cache = ExpertCache(params.slots_per_layer, policy, params.step_aware, rng, ahead)
            if params.warm:
                cache.preload(mine)
            caches[gpu, layer] = cache
    return caches
