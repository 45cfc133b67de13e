"""Synthetic routing fitted to a trace: per layer, the skew and the locality that make the
synthetic generator show the trace's statistics.

Steps too small to show a popularity (fewer than ``4 x E`` assignments) are pooled, ``W``
consecutive trace steps into one. Two statistics then rise with their parameter:
concentration (the sum of squared expert shares in a step, averaged) with skew, and
persistence (the correlation of consecutive steps' loads, ``trace_stats.persistence``) with
locality. Each parameter is found by bisection on the generator itself at the pooled step
size, for all layers at once, with the same seed at every evaluation (common random numbers);
skew and locality are fitted in turn, twice. A pooled step keeps its ranking as its ``W``
steps all do, so the per-step locality is the pooled one to the power ``1 / W``. The fit is
close when a trace step holds ``4 x E`` assignments or more (prefill, batched decode); with
fewer it flattens the skew (rankings drift within a pooled step) and raises the locality.
Statistics use the trace's first steps, at most ``FIT_TOKENS`` tokens per layer and
``FIT_TOKENS_PER_STEP`` per step. Fits are cached per trace file (path, size, modification
time) and model shape.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from moesim.config import SyntheticRouting
from moesim.errors import ConfigError
from moesim.workload.synthetic import SyntheticRouter
from moesim.workload.trace import check_ids, load_trace
from moesim.workload.trace_stats import persistence, step_counts

__all__ = ["FIT_TOKENS", "FIT_TOKENS_PER_STEP", "fit_routing", "fit_trace"]

FIT_TOKENS, FIT_TOKENS_PER_STEP = 1 << 15, 512
_ROUNDS = 12  # bisection halvings: skew to 4 / 4096, locality to 1 / 4096
_TURNS = 2  # skew then locality, in turn
_MAX_SKEW = 4.0
_SPEC = SyntheticRouting(source="synthetic")


def _window(num_experts: int, tokens: int, top_k: int) -> int:
    """Trace steps pooled into one: enough for ``4 x E`` assignments."""
    return max(1, math.ceil(4 * num_experts / (tokens * top_k)))


def _stats(ids_NLTK: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: concentration (sum of squared expert shares per step, averaged) and
    persistence."""
    concentration, kept = [], []
    for layer in range(ids_NLTK.shape[1]):
        counts = step_counts(np.asarray(ids_NLTK[:, layer]), num_experts)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        concentration.append((shares**2).sum(axis=1).mean())
        kept.append(persistence(counts))
    return np.asarray(concentration), np.asarray(kept)


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
    n, layers, t, _ = ids_NLTK.shape
    tokens = min(FIT_TOKENS_PER_STEP, t)
    window = _window(num_experts, tokens, top_k)
    steps = max(1, min(n, FIT_TOKENS // tokens) // window)  # pooled steps
    window = min(window, n)
    pooled = np.asarray(ids_NLTK[: steps * window, :, :tokens])
    pooled = pooled.reshape(steps, window, layers, tokens, -1).transpose(0, 2, 1, 3, 4)
    pooled = pooled.reshape(steps, layers, window * tokens, -1)
    target_concentration, target_persistence = _stats(pooled, num_experts)

    def drawn(skew_L, locality_L):
        rng = np.random.default_rng(np.random.SeedSequence(0))
        router = SyntheticRouter(
            _SPEC, num_experts, top_k, layers, rng, skew_L=skew_L, locality_L=locality_L
        )
        return _stats(router.draw(steps, window * tokens), num_experts)

    skew_L, locality_L = np.zeros(layers), np.zeros(layers)
    for _ in range(_TURNS):
        skew_L = _bisect(
            target_concentration, lambda s, p=locality_L: drawn(s, p)[0], 0.0, _MAX_SKEW
        )
        locality_L = _bisect(target_persistence, lambda p, s=skew_L: drawn(s, p)[1], 0.0, 1.0)
    return skew_L, locality_L ** (1.0 / window)  # a pooled step keeps its ranking: all W do


def fit_trace(
    path: str | Path, num_experts: int, top_k: int, layers: int
) -> tuple[np.ndarray, np.ndarray]:
    """``fit_routing`` of the trace at ``path`` (its first steps, checked), cached."""
    try:
        status = Path(path).stat()
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot read: {error.strerror}") from None
    skew, locality = _fit_cached(
        str(Path(path).resolve()), status.st_mtime_ns, status.st_size, num_experts, top_k, layers
    )
    return np.array(skew), np.array(locality)


@functools.lru_cache(maxsize=16)
def _fit_cached(path: str, _mtime: int, _size: int, num_experts: int, top_k: int, layers: int):
    ids = load_trace(path, num_experts, top_k, layers)
    steps = max(1, FIT_TOKENS // min(FIT_TOKENS_PER_STEP, ids.shape[2]))
    sample = np.asarray(ids[:steps])
    check_ids(sample, num_experts, path)
    skew, locality = fit_routing(sample, num_experts, top_k)
    return tuple(skew), tuple(locality)
