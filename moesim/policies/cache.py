"""Expert buffering: a cache of expert weights per (GPU, MoE layer), with eviction policies.

A cache sees, step after step, the local experts (placement slots) its layer needs, each
requested once per step in ascending id; a request is a hit when the expert is resident and
a miss otherwise, which loads it, evicting a victim when the ``slots_per_layer`` slots are
full. Nothing here knows about time: the simulator turns misses into host-to-device copies.

With ``step_aware: true`` the victim is first sought among residents the step does not need
(the count exchange of dynamic gating tells a GPU which of its experts are active), and among
all residents only when every one is needed. The seed paper's policy is
``{name: lifo, step_aware: true}`` (Huang et al. §VI). Policies: ``lru``, ``lfu`` (ties: least
recent), ``fifo``, ``lifo``, ``random``, ``belady`` (evict the resident whose next request is
farthest away: the offline optimum, it reads the whole request sequence) and ``none`` (no
cache: every local expert stays resident).

Adding a policy: one class with ``Params`` and ``victim(cache, candidates)``, decorated
``@CACHE.register``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from moesim.config import CACHE, Policy, PolicyParams

__all__ = ["CacheParams", "ExpertCache", "StepAccess"]

NEVER = float("inf")


class CacheParams(PolicyParams):
    """``slots_per_layer``: expert weights a GPU keeps per buffered MoE layer; ``layers``: the
    MoE layers buffered; ``prefetch``: copy the next layer's experts during this layer."""

    slots_per_layer: int = Field(default=1, ge=1, le=1_000_000)
    prefetch: Literal["none", "next-layer", "oracle"] = "none"
    warm: bool = False
    step_aware: bool = False
    layers: Literal["all", "encoder", "decoder"] = "all"


@dataclass
class StepAccess:
    """What one step's requests did: per request (ascending expert id) hit or miss, and the
    expert each miss evicted (-1: it took a free slot)."""

    hit: np.ndarray
    evictions: int
    victims: np.ndarray


@dataclass
class ExpertCache:
    """The residents of one (GPU, layer) cache and what policies need to know of them."""

    slots: int
    policy: object
    step_aware: bool = False
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    future: np.ndarray | None = None  # the whole request sequence, for belady
    clock: int = 0  # requests seen so far
    inserted: dict[int, int] = field(default_factory=dict)
    last_use: dict[int, int] = field(default_factory=dict)
    uses: dict[int, int] = field(default_factory=dict)
    next_use: dict[int, float] = field(default_factory=dict)
    _next_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.future is not None:
            self._next_index = _next_uses(self.future)

    @property
    def resident(self) -> list[int]:
        return list(self.inserted)

    def preload(self, experts: Sequence[int]) -> None:
        """Fill the cache (``warm: true``) without counting misses."""
        for expert in list(experts)[: self.slots]:
            self.inserted[int(expert)] = -1
            self.last_use[int(expert)] = -1
            self.uses[int(expert)] = 0
            self.next_use[int(expert)] = self._upcoming(int(expert))

    def _evict(self, needed: set[int]) -> int:
        candidates = [e for e in self.inserted if e not in needed] if self.step_aware else []
        victim = self.policy.victim(self, candidates or list(self.inserted))  # type: ignore[attr-defined]
        self._drop(victim)
        return victim

    def _drop(self, victim: int) -> None:
        for table in (self.inserted, self.last_use, self.uses, self.next_use):
            table.pop(victim, None)

    def _load(self, expert: int, needed: set[int]) -> int:
        """Insert ``expert``; returns the victim it evicted, -1 when a slot was free."""
        victim = self._evict(needed) if len(self.inserted) >= self.slots else -1
        self.inserted[expert] = self.clock
        self.uses[expert] = 0
        return victim

    def access(self, experts: np.ndarray) -> StepAccess:
        """Request ``experts`` (ascending) for one step."""
        needed = {int(e) for e in experts}
        hit = np.zeros(experts.size, dtype=bool)
        victims = np.full(experts.size, -1, dtype=np.int64)
        for i, expert in enumerate(int(e) for e in experts):
            hit[i] = expert in self.inserted
            if not hit[i]:
                victims[i] = self._load(expert, needed)
            self.last_use[expert] = self.clock
            self.uses[expert] = self.uses.get(expert, 0) + 1
            if self._next_index is not None:
                self.next_use[expert] = self._next_index[self.clock]
            self.clock += 1
        return StepAccess(hit, int((victims >= 0).sum()), victims)

    def prefetch(self, experts: Sequence[int]) -> tuple[list[int], int]:
        """Load ``experts`` ahead of their step, evicting only residents outside that set (never
        one just prefetched); returns the experts copied and the evictions."""
        copied: list[int] = []
        evictions = 0
        wanted = {int(e) for e in experts}
        for expert in (int(e) for e in experts):
            if expert in self.inserted:
                continue
            if len(self.inserted) >= self.slots:
                candidates = [e for e in self.inserted if e not in wanted]
                if not candidates:
                    break
                self._drop(self.policy.victim(self, candidates))  # type: ignore[attr-defined]
                evictions += 1
            self.inserted[expert] = self.clock
            self.uses[expert] = 0
            self.last_use[expert] = self.clock
            self.next_use[expert] = self._upcoming(expert)
            copied.append(expert)
        return copied, evictions

    def _upcoming(self, expert: int) -> float:
        if self.future is None:
            return NEVER
        later = np.flatnonzero(self.future[self.clock :] == expert)
        return float(self.clock + later[0]) if later.size else NEVER


def _next_uses(sequence: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request of the same expert (inf if none)."""
    following = np.full(sequence.size, NEVER)
    seen: dict[int, int] = {}
    for index in range(sequence.size - 1, -1, -1):
        expert = int(sequence[index])
        following[index] = seen.get(expert, NEVER)
        seen[expert] = index
    return following


@CACHE.register("none")
class NoCache(Policy):
    """Every local expert resident: the baseline the others are compared with."""

    class Params(CacheParams):
        name: Literal["none"] = "none"


@CACHE.register("lru")
class LeastRecentlyUsed(Policy):
    class Params(CacheParams):
        name: Literal["lru"] = "lru"

    def victim(self, cache: ExpertCache, candidates: list[int]) -> int:
        return min(candidates, key=lambda e: (cache.last_use[e], e))


@CACHE.register("lfu")
class LeastFrequentlyUsed(Policy):
    class Params(CacheParams):
        name: Literal["lfu"] = "lfu"

    def victim(self, cache: ExpertCache, candidates: list[int]) -> int:
        return min(candidates, key=lambda e: (cache.uses[e], cache.last_use[e], e))


@CACHE.register("fifo")
class FirstInFirstOut(Policy):
    class Params(CacheParams):
        name: Literal["fifo"] = "fifo"

    def victim(self, cache: ExpertCache, candidates: list[int]) -> int:
        return min(candidates, key=lambda e: (cache.inserted[e], e))


@CACHE.register("lifo")
class LastInFirstOut(Policy):
    class Params(CacheParams):
        name: Literal["lifo"] = "lifo"

    def victim(self, cache: ExpertCache, candidates: list[int]) -> int:
        return max(candidates, key=lambda e: (cache.inserted[e], e))


@CACHE.register("random")
class RandomEviction(Policy):
    class Params(CacheParams):
        name: Literal["random"] = "random"

    def victim(self, cache: ExpertCache, candidates: list[int]) -> int:
        return sorted(candidates)[int(cache.rng.integers(len(candidates)))]


@CACHE.register("belady")
class Belady(Policy):
    class Params(CacheParams):
        name: Literal["belady"] = "belady"

    def victim(self, cache: ExpertCache, candidates: list[int]) -> int:
        return max(candidates, key=lambda e: (cache.next_use.get(e, NEVER), e))
