"""The local experts of one MoE layer on one rank: all resident, or (expert buffering) host
copies of which the layer's cache policy keeps ``slots_per_layer`` in device slots.

A buffered layer asks its cache, as the simulator does, for the experts that have tokens in
ascending id; each miss copies the expert's weights from host memory (pinned on CUDA) into the
slot of the expert it evicts before the expert runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from moesim.policies import CacheCounters, ExpertCache
from moesim.reference.blocks import FfnWeights, ffn
from moesim.reference.timer import PhaseTimer

__all__ = ["ExpertStore"]


@dataclass
class ExpertStore:
    """``units``: the global unit ids of the local experts, ascending. Either ``resident``
    (stacked weights of every local expert) or ``host`` + ``slots`` + ``cache``."""

    units: np.ndarray
    resident: FfnWeights | None = None
    host: FfnWeights | None = None
    slots: FfnWeights | None = None
    cache: ExpertCache | None = None
    slot_of: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cache is None:
            return
        self.free = list(range(self.cache.slots))[::-1]
        for unit in self.cache.resident:  # warm: preloaded by the policy
            self._copy(int(unit), self.free.pop())

    def _copy(self, unit: int, slot: int) -> None:
        local = int(np.searchsorted(self.units, unit))
        for src, dst in zip(
            self.host.select(local).tensors(), self.slots.select(slot).tensors(), strict=True
        ):
            dst.copy_(src, non_blocking=True)
        self.slot_of[unit] = slot

    def run(
        self,
        rows: list[torch.Tensor],
        real: list[int] | None,
        timer: PhaseTimer,
        counters: CacheCounters,
    ) -> list[torch.Tensor]:
        """Each local expert's FFN over its rows; a buffered expert with no real token (``real``:
        tokens per expert, needed when buffered) is not run (its outputs are zero)."""
        if self.cache is None:
            with timer.phase("expert"):
                return [
                    ffn(r, self.resident.select(j)) if r.shape[0] else r for j, r in enumerate(rows)
                ]
        requested = [j for j, count in enumerate(real) if count > 0]
        access = self.cache.access(self.units[requested])
        counters.hits += int(access.hit.sum())
        counters.misses += int((~access.hit).sum())
        counters.evictions += access.evictions
        outputs = [torch.zeros_like(r) for r in rows]
        for i, j in enumerate(requested):
            unit = int(self.units[j])
            if not access.hit[i]:
                victim = int(access.victims[i])
                slot = self.slot_of.pop(victim) if victim >= 0 else self.free.pop()
                with timer.phase("transfer"):
                    self._copy(unit, slot)
                counters.copies += 1
            with timer.phase("expert"):
                outputs[j] = ffn(rows[j], self.slots.select(self.slot_of[unit]))
        return outputs
