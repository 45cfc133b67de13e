"""The routing of serving steps, drawn in bulk: ``counts_NLGE``, each source GPU's tokens per
expert, for consecutive steps of a given ``tokens_G``.

Shapes: ``N`` steps, ``L`` MoE layers, ``T`` tokens of a step (GPU by GPU), ``K`` top-k, ``G``
GPUs, ``E`` experts. The law is the scenario's synthetic one (``SyntheticRouter``): each
(step, layer) has a ranking of the experts, kept with the locality's chance from one step to
the next; each token picks ``K`` distinct popularity ranks, i.i.d. across tokens. Both are drawn
in blocks, each block with its own generator and consumed in order: rankings
``_RANKING_BLOCK`` steps at a time, token-layer rows ``_ROW_BLOCK`` at a time. A row is a
token's ``K`` ranks (``SyntheticRouter.ranks``), or, where a token has few sets of ``K`` ranks
to pick from (Mixtral: 28 pairs of 8), the index of its set, drawn by the alias method from
``p_J``, each set's exact chance under that draw (``rank_sets``); a big step's GPU with ``S``
tokens then picks its sets as one ``Multinomial(S, p_J)``, at a cost that does not grow with
``S``. All three are the token-level law. A step whose tokens ``Scenario.routing_resolution``
gives to counts draws them with ``CountRouter`` on the same rankings. Multinomials draw each
step with a generator of its own.

Steps are peeked (``draw`` from ``ahead`` steps past the cursor) and then ``commit``-ed: a step
timed past the end of a stretch and dropped gives its rows back, so the routing of the run's
steps does not depend on how its stretches were cut into timing calls.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np

from moesim.config import Scenario
from moesim.workload import SyntheticRouter
from moesim.workload.counts import CountRouter, choice_law

__all__ = ["ServingRouting", "alias_table", "rank_sets"]

SERVING_ROUTING_STREAM = 5  # spawn key of the serving routing streams (the reference's too)
_ROWS, _RANKINGS, _COUNTS, _LAW, _REPLICAS, _SETS = 2, 3, 4, 5, 6, 7  # a generator each
_ROW_BLOCK = 1 << 16  # token-layer rows per block
_MOST_SETS = 256  # rank sets a token can pick, at most, to draw them per GPU as a multinomial
_MOST_ORDERS = 4096  # ordered choices summed up to find the sets' chances
_SET_COST = 10.0  # a multinomial category (a binomial) against one token row, measured
_RANKING_BLOCK = 64  # steps of rankings per block


class ServingRouting:
    """The serving run's routing stream: rankings per step, rank rows per token, in order."""

    def __init__(self, scenario: Scenario, layers: int) -> None:
        model = scenario.model
        self.scenario, self.layers = scenario, layers
        self.experts, self.top_k = model.num_experts, model.top_k
        self.gpus = scenario.cluster.gpus
        self._router = SyntheticRouter(
            scenario.workload.routing, model.num_experts, model.top_k, layers, self._rng(_ROWS)
        )
        self._counts: CountRouter | None = None
        self._sets = rank_sets(self._router)
        self._alias = None if self._sets is None else alias_table(self._sets[1])
        self._rank_of_set_EJ = None if self._sets is None else self._sets[0].T.astype(np.float64)
        # "counts" once a step was drawn at count level
        self.resolution: Literal["tokens", "counts"] = "tokens"
        # committed steps and rank rows; the drawn rankings and rank rows beyond a base
        self.step, self._row = 0, 0
        self._ranking_blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._next_ranking_block = 0
        self._row_blocks: dict[int, np.ndarray] = {}

    def _rng(self, *key: int) -> np.random.Generator:
        seed = np.random.SeedSequence(self.scenario.seed, spawn_key=(SERVING_ROUTING_STREAM, *key))
        return np.random.default_rng(seed)

    def draw(self, tokens_G: np.ndarray, steps: int, ahead: int = 0) -> np.ndarray:
        """``counts_NLGE`` of ``steps`` steps of ``tokens_G`` tokens per GPU, the first
        ``ahead`` steps past the committed ones (those before it drawn with the same
        ``tokens_G``)."""
        first = self.step + ahead
        ranking_XE, row_NL = self._rankings(first, steps)
        tokens = int(tokens_G.sum())
        if self.scenario.routing_resolution(tokens) == "counts":
            return self._count_level(tokens_G, ranking_XE, row_NL, first)
        rows_G = self._row_tokens(tokens_G)
        per_step = self.layers * int(rows_G.sum())
        rows_XR = self._token_rows(self._row + ahead * per_step, steps * per_step)
        # count choices (ranks, or rank sets) per (step, layer) and GPU, rank-major
        gpus = self.gpus
        choices = self.experts if self._sets is None else self._sets[1].size
        base_NL1 = (np.arange(steps * self.layers, dtype=np.int32) * choices * gpus)[:, None]
        base_R = (base_NL1 + np.repeat(np.arange(gpus, dtype=np.int32), rows_G)[None]).ravel()
        keys = (rows_XR.astype(np.int32) * gpus + base_R[None]).ravel()
        picked = np.bincount(keys, minlength=steps * self.layers * choices * gpus)
        picked_NLXG = picked.reshape(steps, self.layers, choices, gpus)
        if self._sets is None:
            return self._by_ranking(picked_NLXG, ranking_XE, row_NL)
        if rows_G.sum() < tokens:  # the GPUs with many tokens: a multinomial each
            picked_NLXG = picked_NLXG + self._set_multinomials(tokens_G - rows_G, steps, first)
        # sets to their ranks: a float product (BLAS; exact for counts below 2**53)
        ranks_NLEG = (self._rank_of_set_EJ @ picked_NLXG.astype(np.float64)).astype(np.int64)
        return self._by_ranking(ranks_NLEG, ranking_XE, row_NL)

    def _by_ranking(
        self, ranks_NLEG: np.ndarray, ranking_XE: np.ndarray, row_NL: np.ndarray
    ) -> np.ndarray:
        """``counts_NLGE`` from the counts per popularity rank (``ranks_NLEG``, rank-major so
        that each (step, layer, rank) moves its GPUs' row in one go) and each (step, layer)'s
        ranking."""
        steps = row_NL.shape[0]
        counts_NLEG = np.empty_like(ranks_NLEG)
        rows = ranking_XE[row_NL] + (np.arange(steps * self.layers) * self.experts).reshape(
            steps, self.layers, 1
        )
        counts_NLEG.reshape(-1, self.gpus)[rows.ravel()] = ranks_NLEG.reshape(-1, self.gpus)
        return counts_NLEG.swapaxes(2, 3)

    def replica_rng(self, step: int) -> np.random.Generator:
        """The generator that splits step ``step``'s counts (and the next ones timed with
        it) over expert replicas."""
        return self._rng(_REPLICAS, step)

    def commit(self, steps: int, tokens_G: np.ndarray) -> None:
        """Consume ``steps`` steps of ``tokens_G`` tokens per GPU (the first ones drawn)."""
        self.step += steps
        tokens = int(tokens_G.sum())
        if self.scenario.routing_resolution(tokens) == "tokens":
            rows = int(self._row_tokens(np.asarray(tokens_G)).sum())
            self._row += steps * self.layers * rows  # a row per token and layer

    def _row_tokens(self, tokens_G: np.ndarray) -> np.ndarray:
        """The tokens per GPU drawn a row each: all, but for GPUs whose tokens would cost
        more than a multinomial over the rank sets (where there are few)."""
        if self._sets is None:
            return tokens_G
        return np.where(tokens_G > _SET_COST * self._sets[1].size, 0, tokens_G)

    def _rankings(self, first: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ranking_XE, row_NL)`` of steps ``first ..``, as ``SyntheticRouter.rankings``."""
        rankings, rows, offset = [], [], 0
        for block in range(first // _RANKING_BLOCK, (first + steps - 1) // _RANKING_BLOCK + 1):
            ranking_XE, row_NL = self._ranking_block(block)
            low = max(first - block * _RANKING_BLOCK, 0)
            high = min(first + steps - block * _RANKING_BLOCK, _RANKING_BLOCK)
            rankings.append(ranking_XE)
            rows.append(row_NL[low:high] + offset)
            offset += ranking_XE.shape[0]
        if len(rankings) == 1:
            return rankings[0], rows[0]
        return np.concatenate(rankings), np.concatenate(rows)

    def _ranking_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``block`` of rankings; blocks are drawn in order (the ranking carries over),
        and dropped once every step in them is committed."""
        for done in [b for b in self._ranking_blocks if b < self.step // _RANKING_BLOCK]:
            del self._ranking_blocks[done]
        while self._next_ranking_block <= block:
            self._router.reseed(self._rng(_RANKINGS, self._next_ranking_block))
            drawn = self._router.rankings(_RANKING_BLOCK)
            self._ranking_blocks[self._next_ranking_block] = drawn
            self._next_ranking_block += 1
        return self._ranking_blocks[block]

    def _token_rows(self, start: int, size: int) -> np.ndarray:
        """Token-layer rows ``start .. start + size - 1`` of the pool: ``K`` ranks each, or
        one rank set where there are few (``rows_XR``); blocks wholly before the cursor are
        dropped (never read again)."""
        for done in [b for b in self._row_blocks if (b + 1) * _ROW_BLOCK <= self._row]:
            del self._row_blocks[done]
        parts = [np.zeros((1, 0), dtype=np.uint8)]  # no rows at all: every GPU's are counts
        for block in range(start // _ROW_BLOCK, (start + size - 1) // _ROW_BLOCK + 1):
            if block not in self._row_blocks:
                self._row_blocks[block] = self._row_block(self._rng(_ROWS, block))
            low = max(start - block * _ROW_BLOCK, 0)
            high = min(start + size - block * _ROW_BLOCK, _ROW_BLOCK)
            parts.append(self._row_blocks[block][:, low:high])
        return parts[-1] if len(parts) <= 2 else np.concatenate(parts[1:], axis=1)

    def _row_block(self, rng: np.random.Generator) -> np.ndarray:
        if self._sets is None:
            self._router.reseed(rng)
            return self._router.ranks(_ROW_BLOCK)
        keep_J, alias_J = self._alias
        uniform = rng.random(_ROW_BLOCK) * keep_J.size
        column = uniform.astype(np.intp)
        picked = np.where(uniform - column < keep_J[column], column, alias_J[column])
        return picked.astype(np.uint8)[None]

    def _count_level(
        self, tokens_G: np.ndarray, ranking_XE: np.ndarray, row_NL: np.ndarray, first: int
    ) -> np.ndarray:
        """Count-level draws, step by step, each with the generator of its step index."""
        if self._counts is None:
            model, routing = self.scenario.model, self.scenario.workload.routing
            law_router = SyntheticRouter(
                routing, model.num_experts, model.top_k, self.layers, self._rng(_LAW)
            )
            self._counts = CountRouter(self._router, tokens_G, choice_law(law_router))
            self.resolution = "counts"
        parts = []
        for n in range(row_NL.shape[0]):
            self._router.reseed(self._rng(_COUNTS, first + n))
            parts.append(self._counts.counts(ranking_XE, row_NL[n : n + 1], tokens_G))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _set_multinomials(self, tokens_G: np.ndarray, steps: int, first: int) -> np.ndarray:
        """``picked_NLJG``: the tokens of each GPU that has any over the rank sets, one
        multinomial per (step, layer, GPU), each step with the generator of its index."""
        p_J = self._sets[1]
        gpus = np.flatnonzero(tokens_G)
        trials_LG = np.broadcast_to(tokens_G[gpus], (self.layers, gpus.size))
        picks = [self._rng(_SETS, first + n).multinomial(trials_LG, p_J) for n in range(steps)]
        picked_NLJG = np.zeros((steps, self.layers, p_J.size, self.gpus), dtype=np.int64)
        picked_NLJG[..., gpus] = np.stack(picks).swapaxes(2, 3)
        return picked_NLJG


def rank_sets(router: SyntheticRouter) -> tuple[np.ndarray, np.ndarray] | None:
    """``(sets_JE, p_J)``: every set of ``K`` distinct ranks (as 0/1 rows) and its chance when
    each next choice is drawn from the rank weights as drawn (``rank_weights_LE``) restricted
    to the ranks not yet chosen, summed over the orders; None where there are too many sets
    (or per-layer weights)."""
    experts, top_k = router.num_experts, router.top_k
    if router.per_layer or math.comb(experts, top_k) > _MOST_SETS:
        return None
    if math.perm(experts, top_k) > _MOST_ORDERS:
        return None
    w_E = np.asarray(router.rank_weights_LE[0], dtype=np.float64)
    orders_XK = np.array(list(itertools.permutations(range(experts), top_k)), dtype=np.int64)
    chosen_XK = np.cumsum(w_E[orders_XK], axis=1) - w_E[orders_XK]  # weight chosen before
    p_X = np.prod(w_E[orders_XK] / (1.0 - chosen_XK), axis=1)
    sets_XE = np.zeros((orders_XK.shape[0], experts), dtype=np.int64)
    np.put_along_axis(sets_XE, orders_XK, 1, axis=1)
    sets_JE, which_X = np.unique(sets_XE, axis=0, return_inverse=True)
    p_J = np.bincount(which_X.ravel(), weights=p_X, minlength=sets_JE.shape[0])
    return sets_JE, p_J / p_J.sum()


def alias_table(p_J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keep_J, alias_J)`` of Walker's alias method (Vose's construction): a uniform column
    ``j`` and a uniform ``u`` pick ``j`` if ``u < keep_J[j]``, else ``alias_J[j]``, each
    ``j`` with chance ``p_J[j]`` exactly (to rounding)."""
    size = p_J.size
    scaled = np.asarray(p_J, dtype=np.float64) * size / p_J.sum()
    keep_J, alias_J = np.ones(size), np.arange(size)
    small = [j for j in range(size) if scaled[j] < 1.0]
    large = [j for j in range(size) if scaled[j] >= 1.0]
    while small and large:
        low, high = small.pop(), large.pop()
        keep_J[low], alias_J[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    return keep_J, alias_J
