"""Count-level synthetic routing: how many tokens each source GPU sends to each expert.

Shapes: ``N`` steps, ``L`` MoE layers, ``G`` source GPUs, ``K`` choice ranks, ``E`` experts.
The law is the token-level one (``synthetic.SyntheticRouter``): the same rankings, locality and
rank popularity ``w``; only the resolution differs. A GPU's ``S`` tokens are independent, so:

- its first choices are exactly ``Multinomial(S, w)``;
- for choice ``k >= 2`` each token picks an expert it has not picked yet. The counts are drawn
  as ``Multinomial(S, q_k)`` with ``q_kr ∝ a_kr * (S - m_r)``: ``m_r`` tokens have already
  picked rank ``r``, and ``a_kr = p_k(r) / (1 - π_<k(r))`` with ``p_k`` the exact marginal of
  the k-th choice under Plackett-Luce and ``π_<k`` the chance of an earlier pick. So
  ``E[counts_k] = S p_k`` to first order, and an expert picked often in earlier choices is
  picked less in later ones (the no-repeat correlation that keeps the spread right).

``p_k`` comes from a Rao-Blackwellised Monte Carlo over prefixes of ``k - 1`` choices:
``p_k(r) = w_r E[1(r not in P) / (1 - w(P))]``, smooth in ``r``, so tail ranks are as exact as
hot ones. Gating needs only the totals over choices (a capacity keeps ``min(total, C)`` however
it orders first and second choices), so a chunk holds ``counts_NLGE`` summed over ``K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workload.synthetic import SyntheticRouter

__all__ = ["ChoiceLaw", "CountRouter", "choice_law"]

_MARGINAL_SAMPLES = 1 << 15
_REDRAW_ROUNDS = 16


@dataclass(frozen=True)
class ChoiceLaw:
    """Per layer: ``w_LE``, the rank popularity as drawn; per choice ``k`` (0-based, ``k``
    earlier picks): ``p_LKE``, the chance that the choice is rank ``r``, and ``weight_LK``, the
    mean popularity of one earlier pick, ``E[w(P_k)] / k``."""

    w_LE: np.ndarray
    p_LKE: np.ndarray
    weight_LK: np.ndarray


def choice_law(router: SyntheticRouter, samples: int = _MARGINAL_SAMPLES) -> ChoiceLaw:
    """The ``ChoiceLaw`` of ``router``'s popularity, by Monte Carlo over choice prefixes drawn
    with ``router``'s generator (give it one of its own: the draws use it up)."""
    w_LE = np.array(router.rank_weights_LE)
    layers, experts = w_LE.shape
    top_k = router.top_k
    p_LKE = np.broadcast_to(w_LE[:, None], (layers, top_k, experts)).copy()
    weight_LK = np.zeros((layers, top_k))
    if router.uniform or top_k == 1:  # every choice uniform; an earlier pick weighs 1 / E
        weight_LK[:] = 1.0 / experts
        return ChoiceLaw(w_LE, p_LKE, weight_LK)
    layer_R = np.repeat(np.arange(layers), samples) if router.per_layer else None
    ranks_KR = router.ranks(samples * (layers if router.per_layer else 1), layer_R)
    layer_R = np.zeros(ranks_KR.shape[1], np.int64) if layer_R is None else layer_R
    rows_L = np.bincount(layer_R, minlength=layers)[:, None].clip(1)
    picked_R = np.zeros(ranks_KR.shape[1])
    for k in range(1, top_k):
        picked_R += w_LE[layer_R, ranks_KR[k - 1]]
        inverse_R = 1.0 / (1.0 - picked_R)
        keys = (layer_R * experts)[None] + ranks_KR[:k].astype(np.int64)
        with_r = np.bincount(keys.ravel(), weights=np.tile(inverse_R, k), minlength=w_LE.size)
        all_L = np.bincount(layer_R, weights=inverse_R, minlength=layers)[:, None]
        p_LKE[:, k] = w_LE * (all_L - with_r.reshape(w_LE.shape)) / rows_L
        weight_LK[:, k] = (
            np.bincount(layer_R, weights=picked_R, minlength=layers) / rows_L[:, 0] / k
        )
    if not router.per_layer:
        p_LKE[:], weight_LK[:] = p_LKE[:1], weight_LK[:1]
    p_LKE /= p_LKE.sum(axis=-1, keepdims=True)  # Monte Carlo leaves the sums off by ~1e-4
    return ChoiceLaw(w_LE, p_LKE, weight_LK)


class CountRouter:
    """Draws ``counts_NLGE`` chunk by chunk for GPUs holding ``tokens_G`` tokens; the rankings
    and the generator are the token-level router's (so ``reseed`` and locality carry over)."""

    def __init__(self, router: SyntheticRouter, tokens_G: np.ndarray, law: ChoiceLaw) -> None:
        self.router = router
        self.tokens_G = np.asarray(tokens_G, dtype=np.int64)
        self.law = law
        self.factor_LKE = self._calibrate(float(self.tokens_G.mean()))

    def _calibrate(self, tokens: float) -> np.ndarray:
        """Factors that make the mean-field pass (expected counts in, expected counts out)
        give each choice exactly its marginal ``p_k``: the approximation's first-order bias."""
        law = self.law
        layers, top_k, experts = law.p_LKE.shape
        picked = np.zeros((1, layers, 1, experts))
        tokens_NLG = np.full((1, layers, 1), tokens)
        factor_LKE = np.ones_like(law.p_LKE)
        for k in range(top_k):
            q = self._choice(k, picked, tokens_NLG, factor_LKE[:, k])[0, :, 0]
            q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1e-300)
            factor_LKE[:, k] = np.divide(law.p_LKE[:, k], q, out=np.ones_like(q), where=q > 0)
            picked = picked + tokens * law.p_LKE[None, :, None, k]
        return factor_LKE

    def _choice(
        self, k: int, picked: np.ndarray, tokens_NLG: np.ndarray, factor_LE: np.ndarray
    ) -> np.ndarray:
        """``q_NLGE`` (unnormalised) of choice ``k`` given the ``picked`` counts of the earlier
        ones; ``factor_LE`` corrects the mean-field's bias (``_calibrate``)."""
        law = self.law
        p_LE = law.p_LKE[:, k]
        if k == 0:
            return np.broadcast_to(p_LE[None, :, None], picked.shape)
        # A token holding rank r picks the rest with weight 1 / (1 - w_r - its other picks).
        others = 1.0 - law.w_LE - (k - 1) * law.weight_LK[:, k, None]
        inverse_LE = 1.0 / np.maximum(others, 1e-3)
        held = picked * inverse_LE[None, :, None]
        all_NLG1 = held.sum(axis=-1, keepdims=True) / k
        # Tokens lacking rank r weigh at least 1 each, at most 1 / (1 - the k heaviest ranks).
        room = np.maximum(tokens_NLG[..., None] - picked, 0)
        heaviest_L = np.sort(law.w_LE, axis=-1)[:, ::-1][:, :k].sum(axis=-1)
        ceiling_L = 1.0 / np.maximum(1.0 - heaviest_L, 1e-3)
        lacking = np.clip(all_NLG1 - held, room, room * ceiling_L[None, :, None, None])
        return lacking * (law.w_LE * factor_LE)[None, :, None]

    @staticmethod
    def _within_room(
        rng: np.random.Generator, trials: np.ndarray, q: np.ndarray, room: np.ndarray
    ) -> np.ndarray:
        """A multinomial draw in which no expert takes more tokens than have not yet picked
        it (a token picks an expert once): the excess is redrawn over the others with room."""
        drawn = rng.multinomial(trials, q)
        for _ in range(_REDRAW_ROUNDS):
            excess = np.maximum(drawn - room, 0)
            if not excess.any():
                break
            drawn -= excess
            open_q = np.where(drawn < room, q, 0.0)
            total = open_q.sum(axis=-1, keepdims=True)
            open_q = np.divide(open_q, total, out=np.zeros_like(open_q), where=total > 0)
            open_q[..., -1] = np.maximum(1.0 - open_q[..., :-1].sum(axis=-1), 0.0)
            drawn += rng.multinomial(excess.sum(axis=-1), open_q)
        return np.minimum(drawn, room)

    def draw(self, steps: int) -> np.ndarray:
        return self.counts(*self.router.rankings(steps), self.tokens_G)

    def counts(
        self, ranking_XE: np.ndarray, row_NL: np.ndarray, tokens_G: np.ndarray
    ) -> np.ndarray:
        """``counts_NLGE`` for rankings drawn by the caller (as ``SyntheticRouter.rankings``)
        and ``tokens_G`` tokens per GPU (the calibration does not depend on them: the mean
        field scales with the tokens)."""
        router = self.router
        rng, layers, gpus = router.rng, router.layers, tokens_G.size
        steps = row_NL.shape[0]
        tokens_NLG = np.broadcast_to(np.asarray(tokens_G, dtype=np.int64), (steps, layers, gpus))
        picked = np.zeros((steps, layers, gpus, router.num_experts), dtype=np.int64)
        for k in range(router.top_k):
            q = self._choice(k, picked, tokens_NLG, self.factor_LKE[:, k])
            total = q.sum(axis=-1, keepdims=True)
            q = np.divide(q, total, out=np.zeros(picked.shape), where=total > 0)
            q[..., -1] = np.maximum(1.0 - q[..., :-1].sum(axis=-1), 0.0)  # exact sums for numpy
            picked += self._within_room(
                rng, np.where(total[..., 0] > 0, tokens_NLG, 0), q, tokens_NLG[..., None] - picked
            )
        counts = np.empty_like(picked, dtype=np.int32)
        experts_NL1E = ranking_XE[row_NL][:, :, None, :]
        np.put_along_axis(counts, np.broadcast_to(experts_NL1E, picked.shape), picked, axis=-1)
        return counts
