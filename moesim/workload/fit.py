"""Synthetic routing fitted to a trace: per layer, the skew and the locality that make the
synthetic generator show the trace's statistics.

Each parameter is found by bisection, for all layers at once, on the synthetic generator
itself (common random numbers: the same seed at every evaluation), so that the generator
matched is the one the run uses: first the skew, matching the trace's per-step Zipf exponent
(``trace_stats.step_skew``, which the ranking's changes do not move), then the locality,
matching the trace's persistence (the correlation of consecutive steps' loads) at that skew:
whether the popular experts stay popular, which the chance of reuse cannot show once every
expert is used in every step. Statistics are taken over the trace's
first ``FIT_STEPS`` steps of at most ``FIT_TOKENS`` tokens, and the same on the generator.
"""

from __future__ import annotations

import numpy as np

from moesim.config import SyntheticRouting
from moesim.workload.synthetic import SyntheticRouter
from moesim.workload.trace_stats import persistence, step_counts, zipf_slopes

__all__ = ["FIT_STEPS", "FIT_TOKENS", "fit_routing"]

FIT_STEPS, FIT_TOKENS = 256, 512
_ROUNDS = 16  # bisection halvings: skew to 4 / 2**16, locality to 2**-16
_MAX_SKEW = 4.0
_SPEC = SyntheticRouting(source="synthetic")


def _stats(ids_NLTK: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: step skew and persistence."""
    skew, kept = [], []
    for layer in range(ids_NLTK.shape[1]):
        counts = step_counts(np.asarray(ids_NLTK[:, layer]), num_experts)
        skew.append(zipf_slopes(counts).mean())
        kept.append(persistence(counts))
    return np.asarray(skew), np.asarray(kept)


def _synthetic(skew_L, locality_L, num_experts, top_k, steps, tokens) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(0))
    router = SyntheticRouter(
        _SPEC, num_experts, top_k, len(skew_L), rng, skew_L=skew_L, locality_L=locality_L
    )
    return router.draw(steps, tokens)


def _bisect(target_L, evaluate, low: float, high: float) -> np.ndarray:
    """Per layer, the parameter in ``[low, high]`` whose statistic (increasing) hits target."""
    lo, hi = np.full(target_L.size, low), np.full(target_L.size, high)
    for _ in range(_ROUNDS):
        mid = (lo + hi) / 2
        below = evaluate(mid) < target_L
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def fit_routing(
    ids_NLTK: np.ndarray, num_experts: int, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(skew_L, locality_L)`` of a synthetic generator that looks like the trace."""
    steps = min(FIT_STEPS, ids_NLTK.shape[0])
    tokens = min(FIT_TOKENS, ids_NLTK.shape[2])
    sample = np.asarray(ids_NLTK[:steps, :, :tokens])
    skew_target, locality_target = _stats(sample, num_experts)
    zeros = np.zeros(ids_NLTK.shape[1])

    def skew_of(skew_L):
        return _stats(_synthetic(skew_L, zeros, num_experts, top_k, steps, tokens), num_experts)[0]

    skew_L = _bisect(skew_target, skew_of, 0.0, _MAX_SKEW)

    def locality_of(locality_L):
        ids = _synthetic(skew_L, locality_L, num_experts, top_k, steps, tokens)
        return _stats(ids, num_experts)[1]

    return skew_L, _bisect(locality_target, locality_of, 0.0, 1.0)
