"""Synthetic top-k routing: per-layer Zipf popularity over a random ranking, with locality.

Shapes: ``N`` steps, ``L`` MoE layers, ``T`` tokens per step, ``K`` top-k, ``E`` experts.
Each token draws ``K`` distinct experts, the first from the popularity and each next one from
the popularity restricted to the experts not yet chosen (rejection sampling); this is the
Plackett-Luce law that a softmax router with noisy logits follows. Ranks are drawn through a
table of 2**20 entries, so each rank's probability is its weight rounded to a multiple of
2**-20 (largest remainders keep the sum exact); that is what makes a draw a few nanoseconds.
"""

from __future__ import annotations

import numpy as np

from moesim.config import SyntheticRouting

__all__ = ["SyntheticRouter", "zipf_weights"]

_MAX_REJECTION_ROUNDS = 64
_TABLE_BITS = 20
_LAYER_TABLE_BITS = 16  # per-layer tables (fitted skews): 2**-16 granularity, 128 KiB each


def zipf_weights(num_experts: int, skew: float) -> np.ndarray:
    """Popularity of the expert at each rank: ``(rank + 1) ** -skew``, normalised; no rank's
    below the smallest normal float, so that a huge skew cannot zero one (a zero left the
    top-k draw without enough experts to pick)."""
    weights = np.arange(1, num_experts + 1, dtype=np.float64) ** -skew
    return np.maximum(weights / weights.sum(), np.finfo(np.float64).tiny)


def rank_table(weights_E: np.ndarray, bits: int = _TABLE_BITS) -> np.ndarray:
    """``2**bits`` ranks, rank ``r`` appearing ``round(weights_E[r] * 2**bits)`` times."""
    size = 1 << bits
    exact = weights_E * size
    copies = np.floor(exact).astype(np.int64)
    short = size - int(copies.sum())
    copies[np.argsort(-(exact - copies), kind="stable")[:short]] += 1
    # the smallest type that holds every rank: a table gather costs what the table's size does
    dtype = next(t for t in (np.uint8, np.int16, np.int32) if weights_E.size - 1 <= np.iinfo(t).max)
    return np.repeat(np.arange(weights_E.size, dtype=dtype), copies)


class SyntheticRouter:
    """Draws ``expert_ids_NLTK`` chunk by chunk; the ranking state carries across chunks.

    ``reseed`` swaps the generator between chunks, so that a stream cut into fixed blocks, each
    with its own generator, gives every step the same routing however it is consumed.
    """

    def __init__(
        self,
        spec: SyntheticRouting,
        num_experts: int,
        top_k: int,
        layers: int,
        rng: np.random.Generator,
        *,
        skew_L: np.ndarray | None = None,
        locality_L: np.ndarray | None = None,
    ) -> None:
        """``skew_L`` / ``locality_L``: per-layer values (a ``fit``) instead of the spec's."""
        skew = 0.0 if spec.distribution == "uniform" else spec.skew
        skews = np.full(layers, skew) if skew_L is None else np.asarray(skew_L, dtype=np.float64)
        self.per_layer = bool(layers) and not np.all(skews == skews[0])
        self.weights_LE = (
            np.stack([zipf_weights(num_experts, s) for s in skews])
            if layers
            else (zipf_weights(num_experts, skew)[None])
        )
        if self.per_layer:  # one smaller table per layer
            self._table = np.concatenate(
                [rank_table(w, _LAYER_TABLE_BITS) for w in self.weights_LE]
            )
            self._table_size = 1 << _LAYER_TABLE_BITS
        else:
            self._table = rank_table(self.weights_LE[0])
            self._table_size = self._table.size
        self.uniform = not self.per_layer and float(skews[0] if layers else skew) == 0.0
        self.locality = spec.locality if locality_L is None else np.asarray(locality_L)[None]
        self.num_experts = num_experts
        self.top_k = top_k
        self.layers = layers
        self.rng = rng
        self._ranking_LE: np.ndarray | None = None
        self.dtype = np.int16 if num_experts <= np.iinfo(np.int16).max else np.int32

    @property
    def rank_weights_LE(self) -> np.ndarray:
        """The chance of each popularity rank as drawn: the table's, rounded to its size."""
        if self.uniform:
            return np.full((max(self.layers, 1), self.num_experts), 1.0 / self.num_experts)
        rows = self._table.size // self._table_size  # one table per layer, or one shared
        keys = np.repeat(np.arange(rows) * self.num_experts, self._table_size) + self._table
        copies_XE = np.bincount(keys, minlength=rows * self.num_experts).reshape(rows, -1)
        shape = (max(self.layers, 1), self.num_experts)
        return np.broadcast_to(copies_XE / self._table_size, shape)

    def reseed(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def rankings(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ranking_XE, row_NL)``: the expert at popularity rank ``r`` in step ``n`` and
        layer ``l`` is ``ranking_XE[row_NL[n, l], r]`` (rows are shared while a ranking is
        kept, so a chunk stores each ranking once)."""
        keep_NL = self.rng.random((steps, self.layers)) < self.locality
        if self._ranking_LE is None:
            keep_NL[0] = False
        fresh = np.flatnonzero(~keep_NL.ravel())
        identity = np.arange(self.num_experts, dtype=self.dtype)
        fresh_XE = self._permutations(fresh.size)
        # Rows of the carried-in ranking come first; each (step, layer) points at the row it uses.
        carried_LE = self._ranking_LE if self._ranking_LE is not None else identity[:0][None]
        carried_LE = carried_LE.reshape(-1, self.num_experts)
        stacked_XE = np.concatenate([carried_LE, fresh_XE])
        row_NL = np.full(steps * self.layers, -1, dtype=np.int64)
        row_NL[fresh] = carried_LE.shape[0] + np.arange(fresh.size)
        first_L = np.arange(carried_LE.shape[0]) if carried_LE.size else np.full(self.layers, -1)
        row_NL = np.vstack([first_L, row_NL.reshape(steps, self.layers)])
        row_NL = np.maximum.accumulate(row_NL, axis=0)[1:]
        self._ranking_LE = stacked_XE[row_NL[-1]]
        return stacked_XE, row_NL

    def _permutations(self, rows: int, key_bits: int = 16) -> np.ndarray:
        """``rows`` uniform random permutations of the experts: the order of i.i.d. 16-bit keys
        (numpy sorts those by radix, four times faster than a shuffle), each tie of two keys
        broken by a coin; a row with three equal keys is shuffled instead. Keys are
        exchangeable and the rule sees only their order, so every permutation is equally
        likely."""
        experts = self.num_experts
        keys = self.rng.integers(0, 1 << key_bits, size=(rows, experts), dtype=np.uint16)
        order = np.argsort(keys, axis=1, kind="stable")
        tie = np.diff(np.take_along_axis(keys, order, axis=1), axis=1) == 0
        triple = (tie[:, 1:] & tie[:, :-1]).any(axis=1)
        tie[triple] = False
        pairs = np.flatnonzero(tie)
        row, first = np.divmod(pairs[self.rng.random(pairs.size) < 0.5], experts - 1)
        order[row, first], order[row, first + 1] = order[row, first + 1], order[row, first]
        order = order.astype(self.dtype)
        identity = np.broadcast_to(
            np.arange(experts, dtype=self.dtype), (int(triple.sum()), experts)
        )
        order[triple] = self.rng.permuted(identity, axis=1)
        return order

    def _draw_ranks(self, layer_R: np.ndarray | None, size: int) -> np.ndarray:
        """Ranks for ``size`` draws; ``layer_R``: each draw's layer (per-layer tables only)."""
        if self.uniform:
            return self.rng.integers(0, self.num_experts, size=size, dtype=np.uint32)
        index = self.rng.integers(0, self._table_size, size=size, dtype=np.uint32)
        if self.per_layer:
            index = index + layer_R.astype(np.int64) * self._table_size
        return self._table[index]

    def ranks(self, rows: int, layer_R: np.ndarray | None = None) -> np.ndarray:
        """``ranks_KR``: ``K`` distinct popularity ranks for each of ``rows`` tokens, drawn
        from the popularity of each row's layer (``layer_R``)."""
        ranks_KR = self._draw_ranks(
            None if layer_R is None else np.tile(layer_R, self.top_k), self.top_k * rows
        ).reshape(self.top_k, rows)
        for k in range(1, self.top_k):
            clash = ranks_KR[0] == ranks_KR[k]
            for j in range(1, k):
                clash |= ranks_KR[j] == ranks_KR[k]
            rows_clash = np.flatnonzero(clash)  # shrinks round by round, never rescanned
            for _ in range(_MAX_REJECTION_ROUNDS):
                if rows_clash.size == 0:
                    break
                layers = None if layer_R is None else layer_R[rows_clash]
                redrawn = self._draw_ranks(layers, rows_clash.size)
                ranks_KR[k, rows_clash] = redrawn
                rows_clash = rows_clash[(ranks_KR[:k, rows_clash] == redrawn).any(axis=0)]
            else:
                self._gumbel_fill(ranks_KR, rows_clash, k, layer_R)
        return ranks_KR

    def _gumbel_fill(
        self, ranks_KR: np.ndarray, rows: np.ndarray, k: int, layer_R: np.ndarray | None
    ) -> None:
        """Redraw choices ``k..K-1`` of ``rows`` without replacement (Gumbel top-k)."""
        weights = self.weights_LE[layer_R[rows]] if self.per_layer else self.weights_LE[:1]
        keys = np.log(weights) + self.rng.gumbel(size=(rows.size, self.num_experts))
        np.put_along_axis(keys, ranks_KR[:k, rows].T.astype(np.int64), -np.inf, axis=1)
        order = np.argsort(-keys, axis=1)[:, : self.top_k - k]
        ranks_KR[k:, rows] = order.T

    def draw(self, steps: int, tokens: int) -> np.ndarray:
        """``expert_ids_NLTK`` for ``steps`` consecutive steps of ``tokens`` tokens."""
        ranking_XE, row_NL = self.rankings(steps)
        layer_R = None
        if self.per_layer:  # rows run (step, layer, token)
            layer_R = np.tile(np.repeat(np.arange(self.layers), tokens), steps)
        ranks_KR = self.ranks(steps * self.layers * tokens, layer_R)
        ranks_NLX = ranks_KR.T.reshape(steps, self.layers, tokens * self.top_k)
        offsets_NL = row_NL * self.num_experts
        experts = ranking_XE.ravel()[ranks_NLX + offsets_NL.reshape(steps, self.layers, 1)]
        return experts.reshape(steps, self.layers, tokens, self.top_k)
