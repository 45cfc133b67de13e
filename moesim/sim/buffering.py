"""Expert buffering in the step loop: cache decisions become copies that experts wait for.

Per buffered MoE layer and GPU: the layer's cache policy turns the experts the step needs
(those with at least one token, ascending id) into hits and misses; a buffered expert with no
token is not run, so under static gating its padding is skipped. Each miss is a host-to-device
copy of one expert on the GPU's copy engine over its PCIe host link, ``latency + bytes *
shared_by / (bandwidth * efficiency)`` (with the model card's tables, its measured copy of
one expert into its slot, times ``shared_by``); copies start when the count exchange has told
the GPU which experts it needs (at the dispatch all-to-all, Huang et al. §VI) or when the
engine frees up, one after another. Experts run in ascending id once the dispatch has ended,
each no earlier than its copy: ``end_i = max(end_{i-1}, ready_i) + duration_i``. A device
without a copy engine (``links.host.overlaps_compute: false``, a CPU) copies each missed
expert on its compute stream just before running it. With prefetch, after its own misses the
copy engine loads the next layer's predicted experts (``next-layer``: the layer's most
requested so far; ``oracle``: exactly those it will need), which the next layer finds
resident, waiting only if their copy has not landed. Time between the dispatch's end and the
slowest GPU's last expert that is not compute is ``transfer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.config import Scenario
from moesim.hardware import transfer_time
from moesim.hardware.model_tables import tables_for
from moesim.metrics import PHASES
from moesim.policies import (
    CacheCounters,
    ExpertCache,
    PlacementPlan,
    buffered_stacks,
    build_caches,
)
from moesim.sim.chunk import ChunkTiming
from moesim.sim.local_work import LocalWork
from moesim.sim.timeline import Span

__all__ = ["Buffering"]

_EXPERT, _TRANSFER = PHASES.index("expert"), PHASES.index("transfer")


@dataclass
class Buffering:
    """The caches of a run and the copy engines' clocks (absolute seconds)."""

    scenario: Scenario
    plan: PlacementPlan
    future: dict[tuple[int, int], list] | None = None
    caches: dict[tuple[int, int], ExpertCache] = field(default_factory=dict)
    copy_free_G: np.ndarray = field(init=False)
    ready: dict[tuple[int, int, int], float] = field(default_factory=dict)
    popularity_LU: np.ndarray = field(init=False)
    copy_spans: list[Span] = field(default_factory=list)  # of the last step
    expert_LG: np.ndarray = field(init=False)  # each GPU's expert phase in the last step

    def __post_init__(self) -> None:
        params = self.scenario.policies.cache
        model, cluster = self.scenario.model, self.scenario.cluster
        self.params = params
        self.active = self.scenario.stack() in buffered_stacks(self.scenario)
        self.caches = build_caches(self.scenario, self.plan, self.future)
        layers = self.plan.layers
        self.copy_free_G = np.zeros(self.plan.gpus)
        self.expert_LG = np.zeros((layers, self.plan.gpus))
        self.popularity_LU = np.zeros((layers, self.plan.units))
        self.expert_bytes = model.expert_params * model.dtype_bytes
        host = cluster.device.links.host
        self.copy_s = float(transfer_time(host, self.expert_bytes * host.shared_by))
        tables = tables_for(tuple(cluster.device.compute.models or ()), model)
        if tables is not None:  # measured: the executor's copy of one expert into its slot
            self.copy_s = tables.expert_copy * host.shared_by
        self.serial_copies = not host.overlaps_compute

    def _copies(self, gpu: int, layer: int, start: float, count: int) -> np.ndarray:
        """Landing times of ``count`` copies queued on ``gpu``'s copy engine from ``start``."""
        begin = max(start, self.copy_free_G[gpu])
        landed = begin + self.copy_s * np.arange(1, count + 1)
        if count:
            self.copy_free_G[gpu] = landed[-1]
        self.copy_spans += [
            (gpu, "copy", "copy_expert", layer, float(t) - self.copy_s, self.copy_s) for t in landed
        ]
        return landed

    def _serial_spans(
        self, gpu: int, layer: int, start: float, work: np.ndarray, missed: np.ndarray
    ) -> None:
        """Copy spans when the compute stream copies each missed expert just before it runs."""
        clock = start
        for duration, miss in zip(work, missed, strict=True):
            if miss:
                self.copy_spans.append((gpu, "copy", "copy_expert", layer, clock, self.copy_s))
                clock += self.copy_s
            clock += float(duration)

    def _layer(
        self,
        layer: int,
        durations_U: np.ndarray,
        needed_U: np.ndarray,
        dispatch_start: float,
        dispatch_end: float,
        shared_G: np.ndarray,
        stats: CacheCounters,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each GPU's expert-phase end and its time spent waiting for copies."""
        gpus = self.plan.gpus
        end_G, stall_G = np.empty(gpus), np.empty(gpus)
        for gpu in range(gpus):
            mine = np.flatnonzero(self.plan.owner_LU[layer] == gpu)
            experts = mine[needed_U[mine]]
            access = self.caches[gpu, layer].access(experts)
            self.popularity_LU[layer, experts] += 1
            misses = int((~access.hit).sum())
            stats.hits += int(access.hit.sum())
            stats.misses += misses
            stats.evictions += access.evictions
            ready = np.full(experts.size, dispatch_end)
            work = durations_U[experts]  # experts without tokens skip their padding
            if self.serial_copies:  # the compute stream copies each miss before running it
                self._serial_spans(gpu, layer, dispatch_end, work, ~access.hit)
                work = work + self.copy_s * ~access.hit
            else:  # a copy may land before the tokens do: an expert starts after both
                ready[~access.hit] = np.maximum(
                    self._copies(gpu, layer, dispatch_start, misses), dispatch_end
                )
            for expert in experts[~access.hit]:
                self.ready.pop((gpu, layer, int(expert)), None)  # a prefetch it outlived
            for i in np.flatnonzero(access.hit):
                ready[i] = max(
                    dispatch_end, self.ready.pop((gpu, layer, int(experts[i])), dispatch_end)
                )
            before = np.concatenate([[0.0], np.cumsum(work)[:-1]])
            # end_i = max(end_{i-1}, ready_i) + work_i, unrolled: S_i + max_j (ready_j - S_{j-1})
            finish = dispatch_end + work.sum()
            if experts.size:
                finish = float(work.sum() + np.max(ready - before))
            end_G[gpu] = finish + shared_G[gpu]
            stall_G[gpu] = max(0.0, finish - dispatch_end - durations_U[experts].sum())
        return end_G, stall_G

    def _prefetch(
        self, layer: int, needed_U: np.ndarray | None, start: float, stats: CacheCounters
    ) -> None:
        """Copy ``layer``'s predicted experts into its caches from ``start``."""
        for gpu in range(self.plan.gpus):
            mine = np.flatnonzero(self.plan.owner_LU[layer] == gpu)
            if needed_U is not None:  # oracle
                predicted = mine[needed_U[mine]]
            else:
                order = np.argsort(-self.popularity_LU[layer, mine], kind="stable")
                predicted = mine[order][: self.params.slots_per_layer]
            copied, evictions = self.caches[gpu, layer].prefetch(predicted)
            stats.evictions += evictions
            for expert, landed in zip(
                copied, self._copies(gpu, layer, start, len(copied)), strict=True
            ):
                self.ready[gpu, layer, expert] = float(landed)
            stats.copies += len(copied)

    def step(
        self,
        index: int,
        start_s: float,
        local: LocalWork,
        timing: ChunkTiming,
        breakdown_P: np.ndarray,
    ) -> tuple[float, CacheCounters]:
        """The step's latency with buffering (``breakdown_P`` is updated in place)."""
        stats = CacheCounters()
        self.copy_spans = []
        pre_L = local.pre_LG.max(axis=1) if self.plan.layers else np.zeros(0)
        needed_LU = timing.tokens_NLU[index] > 0
        clock = start_s
        expert_total = transfer_total = 0.0
        for layer in range(self.plan.layers):
            dispatch_start = clock + pre_L[layer] + timing.count_NL[index, layer]
            dispatch_end = dispatch_start + timing.dispatch_NL[index, layer]
            if self.active:
                end_G, stall_G = self._layer(
                    layer,
                    timing.expert_NLU[index, layer],
                    needed_LU[layer],
                    dispatch_start,
                    dispatch_end,
                    local.shared_G,
                    stats,
                )
                self.expert_LG[layer] = end_G - dispatch_end
                critical = int(np.argmax(end_G))
                phase = end_G[critical] - dispatch_end
                transfer_total += stall_G[critical]
                expert_total += phase - stall_G[critical]
                if self.params.prefetch != "none" and layer + 1 < self.plan.layers:
                    oracle = needed_LU[layer + 1] if self.params.prefetch == "oracle" else None
                    self._prefetch(layer + 1, oracle, dispatch_end, stats)
            else:
                self.expert_LG[layer] = timing.expert_NLG[index, layer]
                phase = self.expert_LG[layer].max()
                expert_total += phase
            clock = dispatch_end + phase + timing.combine_NL[index, layer]
        breakdown_P[_EXPERT] = expert_total
        breakdown_P[_TRANSFER] = transfer_total
        return float(breakdown_P.sum()), stats
