"""Eviction policies against hand-worked request sequences, and Belady as the bound."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.config import CACHE
from moesim.policies import ExpertCache


def _cache(name, slots, step_aware=False, future=None, seed=0) -> ExpertCache:
    policy = CACHE.build(CACHE.validate({"name": name, "slots_per_layer": slots}))
    return ExpertCache(slots, policy, step_aware, np.random.default_rng(seed), future)


def _run(cache: ExpertCache, steps) -> tuple[list[list[bool]], list[list[int]]]:
    hits, residents = [], []
    for needed in steps:
        access = cache.access(np.array(needed))
        hits.append(access.hit.tolist())
        residents.append(sorted(cache.resident))
    return hits, residents


def test_the_papers_example_step_aware_lifo_evicts_2_to_load_3() -> None:
    # Huang et al. §VI: 4 experts, 2 slots, experts 1, 2, 3 needed: loading 3 evicts 2.
    cache = _cache("lifo", 2, step_aware=True)
    _, residents = _run(cache, [[1, 2, 3]])
    assert residents == [[1, 3]]


def test_step_aware_first_evicts_what_the_step_does_not_need() -> None:
    # Requests [1, 2], [2, 3]: loading 3, plain LIFO evicts 2 (last in) although this step
    # needs it; step-aware LIFO evicts 1, which the step does not need.
    steps = [[1, 2], [2, 3]]
    assert _run(_cache("lifo", 2), steps)[1][-1] == [1, 3]
    assert _run(_cache("lifo", 2, step_aware=True), steps)[1][-1] == [2, 3]
    # LRU: [1], [2], [0, 1]: loading 0, plain LRU evicts 1 (least recent) which the step needs
    # next, and misses it; step-aware evicts 2 and hits 1.
    assert _run(_cache("lru", 2), [[1], [2], [0, 1]])[0][-1] == [False, False]
    assert _run(_cache("lru", 2, step_aware=True), [[1], [2], [0, 1]])[0][-1] == [False, True]


def test_prefetch_never_evicts_what_it_prefetches_or_the_predicted_set() -> None:
    for name in ("lifo", "lfu", "lru", "fifo"):
        cache = _cache(name, 2)
        _run(cache, [[0, 1]])
        copied, evictions = cache.prefetch([2, 3])
        assert copied == [2, 3] and evictions == 2
        hits, _ = _run(cache, [[2, 3]])
        assert hits == [[True, True]]
        # a full cache of predicted experts takes nothing more
        assert cache.prefetch([2, 3, 4]) == ([], 0)


def test_a_warm_belady_looks_ahead_at_preloaded_experts() -> None:
    steps = [[2], [1], [1], [1]]
    future = np.concatenate([np.array(s) for s in steps])
    misses = {}
    for name in ("lru", "belady"):
        cache = _cache(name, 2, future=future)
        cache.preload([0, 1])
        misses[name] = sum(h.count(False) for h in _run(cache, steps)[0])
    assert misses == {"lru": 1, "belady": 1}  # belady evicts 0 (never used), keeps 1


@pytest.mark.parametrize(
    ("name", "hits", "final"),
    [
        # requests by step: [0, 1], [2], [0], [1, 3], [0]; 2 slots
        # lru: 2 evicts 0, 0 evicts 1, 1 evicts 2, 3 evicts 0, 0 evicts 1: never a hit
        ("lru", [[False, False], [False], [False], [False, False], [False]], [0, 3]),
        ("fifo", [[False, False], [False], [False], [False, False], [False]], [0, 3]),
        # lifo: 2 evicts 1 (last in), 0 hits, 1 evicts 2, 3 evicts 1, 0 hits
        ("lifo", [[False, False], [False], [True], [False, False], [True]], [0, 3]),
        # lfu counts restart on reload, ties go to the least recent: as lru here
        ("lfu", [[False, False], [False], [False], [False, False], [False]], [0, 3]),
        # belady: 2 evicts 1 (next used later than 0), 1 evicts 2 (never again), 3 evicts 1
        ("belady", [[False, False], [False], [True], [False, False], [True]], [0, 3]),
    ],
)
def test_policies_by_hand(name, hits, final) -> None:
    steps = [[0, 1], [2], [0], [1, 3], [0]]
    future = np.concatenate([np.array(s) for s in steps])
    got_hits, residents = _run(_cache(name, 2, future=future), steps)
    assert got_hits == hits
    assert residents[-1] == final


def test_random_is_deterministic_per_seed() -> None:
    steps = [[0, 1, 2], [3, 0], [1, 4], [2, 0]]
    a = _run(_cache("random", 2, seed=5), steps)
    assert a == _run(_cache("random", 2, seed=5), steps)


def test_enough_slots_give_one_cold_miss_per_distinct_expert_and_warm_none() -> None:
    rng = np.random.default_rng(1)
    steps = [sorted(rng.choice(6, size=3, replace=False).tolist()) for _ in range(30)]
    for name in ("lru", "lfu", "fifo", "lifo", "random", "belady"):
        cold = _cache(name, 6, future=np.concatenate([np.array(s) for s in steps]))
        misses = sum(h.count(False) for h in _run(cold, steps)[0])
        assert misses == len({e for s in steps for e in s})
        warm = _cache(name, 6, future=np.concatenate([np.array(s) for s in steps]))
        warm.preload(range(6))
        assert all(all(h) for h in _run(warm, steps)[0])


@settings(max_examples=150, deadline=None)
@given(
    st.booleans(),
    st.integers(1, 5),
    st.lists(
        st.lists(st.integers(0, 7), min_size=1, max_size=5, unique=True), min_size=1, max_size=25
    ),
)
def test_belady_never_misses_more_than_any_policy(warm, slots, raw_steps) -> None:
    steps = [sorted(s) for s in raw_steps]
    future = np.concatenate([np.array(s) for s in steps])
    misses = {}
    for name in ("lru", "lfu", "fifo", "lifo", "random", "belady"):
        cache = _cache(name, slots, future=future)
        if warm:
            cache.preload(range(slots))
        hits, residents = _run(cache, steps)
        misses[name] = sum(h.count(False) for h in hits)
        assert all(len(r) <= slots for r in residents)  # never more than its slots
    assert misses["belady"] == min(misses.values())
