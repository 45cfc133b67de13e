"""Gating policies: from each token's top-k experts to what every expert computes.

Shapes: ``N`` steps, ``L`` MoE layers, ``T`` tokens per step, ``K`` top-k, ``E`` experts,
``G`` GPUs. A policy sees routing and the token split, never time or hardware; the simulator
and the reference executor call the same code. ``gate`` takes token-level routing
(``expert_ids_NLTK``), ``gate_counts`` count-level routing (``counts_NLGE``, tokens each
source GPU sends to each expert): the same outcome from either.

- ``static``: each source GPU gives each expert ``C`` slots; first choices take slots before
  second choices, then token order (fairseq's ``top2gating``); assignments beyond ``C`` are
  dropped; every slot is sent and computed, empty ones as zero padding.
- ``dynamic``: a count exchange, then variable-size all-to-alls; nothing dropped or padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from moesim.config import GATING, Policy, PolicyParams

__all__ = ["DynamicGating", "GatingOutcome", "StaticGating", "expert_counts", "static_capacity"]


@dataclass(frozen=True)
class GatingOutcome:
    """What the experts compute for a chunk of steps.

    ``tokens_NLE``: assignments each expert processes; ``slots_NLE``: rows it computes (padding
    included); ``capacity_G``: slots per expert each source GPU sends under static gating
    (None: variable-size rows, exchanged after a count all-to-all, and nothing dropped);
    ``einsum_dispatch``: dispatch/combine are dense ``S x E x C`` tensors (GShard/fairseq style).
    """

    tokens_NLE: np.ndarray
    slots_NLE: np.ndarray
    capacity_G: np.ndarray | None
    einsum_dispatch: bool = False

    @property
    def count_exchange(self) -> bool:
        return self.capacity_G is None


def expert_counts(
    expert_ids_NLTK: np.ndarray, num_experts: int, mask_NLTK: np.ndarray | None = None
) -> np.ndarray:
    """``counts_NLE``: assignments to each expert (only where ``mask_NLTK`` when given)."""
    n, layers, _, _ = expert_ids_NLTK.shape
    # bincount counts intp keys: build them as such, in one pass
    offsets_NL = (np.arange(n * layers, dtype=np.intp) * num_experts).reshape(n, layers, 1, 1)
    keys = expert_ids_NLTK + offsets_NL
    keys = keys[mask_NLTK] if mask_NLTK is not None else keys.ravel()
    return np.bincount(keys, minlength=n * layers * num_experts).reshape(n, layers, num_experts)


def static_capacity(
    formula: str,
    capacity_factor: float,
    min_capacity: int,
    tokens_G: np.ndarray,
    num_experts: int,
    top_k: int,
) -> np.ndarray:
    """``C_G``: slots per expert that each source GPU with ``tokens_G`` tokens sends."""
    tokens = tokens_G.astype(np.float64)
    num_experts = max(num_experts, 1)
    if formula == "gshard":
        capacity = np.maximum(min_capacity, np.ceil(capacity_factor * top_k * tokens / num_experts))
    elif formula == "tutel":
        capacity = top_k * np.floor(capacity_factor * np.ceil(tokens / num_experts))
    else:  # fairseq: a fraction of the local tokens per expert
        capacity = np.maximum(min_capacity, np.ceil(capacity_factor * tokens))
    return capacity.astype(np.int64)


@GATING.register("static")
class StaticGating(Policy):
    """Capacity-factor gating with padding and dropping (GShard, Tutel and fairseq formulas)."""

    class Params(PolicyParams):
        name: Literal["static"] = "static"
        capacity_factor: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)
        formula: Literal["gshard", "tutel", "fairseq"] = "gshard"
        min_capacity: int = Field(default=4, ge=0)
        dispatch: Literal["einsum", "index"] = Field(
            default="einsum", description="dense S x E x C masks (fairseq) or index scatter (Tutel)"
        )

    def capacity(self, tokens_G: np.ndarray, num_experts: int, top_k: int) -> np.ndarray:
        """``C_G`` for source GPUs holding ``tokens_G`` tokens."""
        p = self.params
        return static_capacity(
            p.formula, p.capacity_factor, p.min_capacity, tokens_G, num_experts, top_k
        )

    def gate(
        self, expert_ids_NLTK: np.ndarray, source_T: np.ndarray, gpus: int, num_experts: int
    ) -> GatingOutcome:
        n, layers, tokens, top_k = expert_ids_NLTK.shape
        capacity_G = self.capacity(np.bincount(source_T, minlength=gpus), num_experts, top_k)
        if gpus * num_experts <= tokens * top_k:  # per-source counts are the smaller array
            source_11T1 = (source_T * num_experts).reshape(1, 1, tokens, 1)
            rows_NL11 = (np.arange(n * layers, dtype=np.intp) * gpus * num_experts).reshape(
                n, layers, 1, 1
            )
            keys = (expert_ids_NLTK + source_11T1 + rows_NL11).ravel()
            per_source = np.bincount(keys, minlength=n * layers * gpus * num_experts)
            kept = np.minimum(per_source.reshape(n, layers, gpus, num_experts), capacity_G[:, None])
            return self._outcome(kept.sum(axis=2), capacity_G)
        counts_NLE = expert_counts(expert_ids_NLTK, num_experts)
        tokens_NLE = counts_NLE
        # A (step, layer, expert) can drop only if its total load exceeds the smallest capacity;
        # for those cells, count per source GPU and keep min(count, C_g).
        risky = np.flatnonzero(counts_NLE.ravel() > capacity_G.min())
        if risky.size:
            cell_id = np.full(counts_NLE.size, -1, dtype=np.int64)
            cell_id[risky] = np.arange(risky.size)
            step_layer = np.arange(n * layers).reshape(n, layers, 1, 1) * num_experts
            cell_NLTK = cell_id[expert_ids_NLTK + step_layer]
            source_NLTK = np.broadcast_to(source_T[None, None, :, None], cell_NLTK.shape)
            chosen = cell_NLTK >= 0
            key = cell_NLTK[chosen] * gpus + source_NLTK[chosen]
            per_source_RG = np.bincount(key, minlength=risky.size * gpus).reshape(-1, gpus)
            tokens_NLE = counts_NLE.copy()
            tokens_NLE.ravel()[risky] = np.minimum(per_source_RG, capacity_G).sum(axis=1)
        return self._outcome(tokens_NLE, capacity_G)

    def gate_counts(
        self, counts_NLGE: np.ndarray, tokens_G: np.ndarray, top_k: int
    ) -> GatingOutcome:
        """From count-level routing: each source keeps ``min(count, C_g)`` per expert (first
        choices first leaves that total unchanged, whichever assignments it keeps)."""
        capacity_G = self.capacity(tokens_G, counts_NLGE.shape[-1], top_k)
        kept = np.minimum(counts_NLGE, capacity_G[:, None]).sum(axis=2, dtype=np.int64)
        return self._outcome(kept, capacity_G)

    def _outcome(self, tokens_NLE: np.ndarray, capacity_G: np.ndarray) -> GatingOutcome:
        slots_NLE = np.full(tokens_NLE.shape, capacity_G.sum(), dtype=np.int64)
        return GatingOutcome(
            tokens_NLE, slots_NLE, capacity_G, einsum_dispatch=self.params.dispatch == "einsum"
        )

    def kept(
        self, expert_ids_NLTK: np.ndarray, source_T: np.ndarray, gpus: int, num_experts: int
    ) -> np.ndarray:
        """``kept_NLTK``: which assignments get a slot. Per (step, layer, source, expert) the
        first ``C`` by choice, then token order (fairseq's ``top2gating``); a sort, so meant
        for the reference executor and tests rather than the simulator's hot path."""
        n, layers, tokens, top_k = expert_ids_NLTK.shape
        capacity_G = self.capacity(np.bincount(source_T, minlength=gpus), num_experts, top_k)
        step_layer, t, k = np.unravel_index(
            np.arange(expert_ids_NLTK.size), (n * layers, tokens, top_k)
        )
        source = source_T[t]
        group = (step_layer * gpus + source) * num_experts + expert_ids_NLTK.ravel()
        order = np.lexsort((t, k, group))
        sorted_group = group[order]
        starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
        first = np.repeat(starts, np.diff(np.r_[starts, sorted_group.size]))
        kept = np.empty(expert_ids_NLTK.size, dtype=bool)
        kept[order] = np.arange(sorted_group.size) - first < capacity_G[source[order]]
        return kept.reshape(expert_ids_NLTK.shape)


@GATING.register("dynamic")
class DynamicGating(Policy):
    """Exact counts: a count exchange, then variable-size all-to-alls (Huang et al. §V)."""

    class Params(PolicyParams):
        name: Literal["dynamic"] = "dynamic"

    def gate(
        self, expert_ids_NLTK: np.ndarray, source_T: np.ndarray, gpus: int, num_experts: int
    ) -> GatingOutcome:
        counts_NLE = expert_counts(expert_ids_NLTK, num_experts)
        return GatingOutcome(counts_NLE, counts_NLE, None)

    def gate_counts(
        self, counts_NLGE: np.ndarray, tokens_G: np.ndarray, top_k: int
    ) -> GatingOutcome:
        counts_NLE = counts_NLGE.sum(axis=2, dtype=np.int64)
        return GatingOutcome(counts_NLE, counts_NLE, None)
