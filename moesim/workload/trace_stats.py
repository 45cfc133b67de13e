"""What a routing trace says about its layers: skew, temporal locality, co-activation.

Shapes: ``N`` steps, ``T`` tokens, ``K`` top-k, ``E`` experts; one layer at a time.

- popularity: each expert's share of the layer's token-expert assignments, and the Zipf
  exponent fitted to it (least squares of log share on log rank over the experts used);
- step skew: the same exponent fitted within each step, averaged over steps (what a per-step
  load imbalance sees, whatever the ranking does from step to step);
- temporal locality: the chance that an expert used in a step is used again in the next;
- persistence: the correlation of consecutive steps' expert loads (Pearson, averaged), which
  says whether the popular experts stay popular even when every expert is used every step;
- co-activation: for top-k >= 2, the share of tokens that pick both experts ``i`` and ``j``;
  for top-1, the share of steps that use both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLOCK_ASSIGNMENTS",
    "LayerStats",
    "coactivation",
    "layer_stats",
    "persistence",
    "step_counts",
    "step_skew",
    "temporal_locality",
    "zipf_exponent",
    "zipf_slopes",
]

BLOCK_ASSIGNMENTS = 1 << 22  # token-expert assignments read into memory at a time


def step_counts(ids_NTK: np.ndarray, num_experts: int) -> np.ndarray:
    """``counts_NE``: assignments to each expert in each step."""
    n = ids_NTK.shape[0]
    keys = ids_NTK.reshape(n, -1).astype(np.int64) + np.arange(n)[:, None] * num_experts
    return np.bincount(keys.ravel(), minlength=n * num_experts).reshape(n, num_experts)


def zipf_slopes(counts_XE: np.ndarray) -> np.ndarray:
    """Zipf exponent per row: minus the least-squares slope of log count on log rank, over
    the experts with a positive count."""
    ordered = -np.sort(-counts_XE, axis=1).astype(np.float64)
    used = ordered > 0
    x = np.log(np.arange(1, ordered.shape[1] + 1, dtype=np.float64))[None]
    y = np.log(np.where(used, ordered, 1.0))
    m = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (x * used).sum(axis=1) / m
        my = (y * used).sum(axis=1) / m
        cov = ((x - mx[:, None]) * (y - my[:, None]) * used).sum(axis=1)
        var = (((x - mx[:, None]) ** 2) * used).sum(axis=1)
        slope = np.where((m >= 2) & (var > 0), -cov / var, 0.0)
    return slope


def zipf_exponent(counts_E: np.ndarray) -> float:
    """The Zipf exponent of a popularity (0 for a uniform one)."""
    return float(zipf_slopes(np.asarray(counts_E)[None])[0])


def step_skew(counts_NE: np.ndarray) -> float:
    """The Zipf exponent fitted in each step, averaged over steps."""
    return float(zipf_slopes(counts_NE).mean()) if counts_NE.size else 0.0


def temporal_locality(counts_NE: np.ndarray) -> float:
    """Experts used in both step ``n`` and ``n + 1``, over experts used in step ``n``."""
    used = counts_NE > 0
    if used.shape[0] < 2 or not used[:-1].any():
        return 0.0
    return float((used[:-1] & used[1:]).sum() / used[:-1].sum())


def persistence(counts_NE: np.ndarray) -> float:
    """Mean Pearson correlation of consecutive steps' loads (0 where a step is flat)."""
    if counts_NE.shape[0] < 2:
        return 0.0
    centred = counts_NE - counts_NE.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1))
    products = (centred[:-1] * centred[1:]).sum(axis=1)
    scale = norms[:-1] * norms[1:]
    return float(np.where(scale > 0, products / np.where(scale > 0, scale, 1.0), 0.0).mean())


def _pair_counts(ids_NTK: np.ndarray, num_experts: int) -> np.ndarray:
    """``P_EE``: tokens that pick both ``i`` and ``j`` (top-k >= 2); the diagonal is zero."""
    k = ids_NTK.shape[-1]
    flat = ids_NTK.reshape(-1, k).astype(np.int64)
    pairs = np.zeros(num_experts * num_experts)
    for a in range(k):
        for b in range(k):
            if a != b:
                keys = flat[:, a] * num_experts + flat[:, b]
                pairs += np.bincount(keys, minlength=num_experts * num_experts)
    return pairs.reshape(num_experts, num_experts)


def _step_coactivation(counts_NE: np.ndarray) -> np.ndarray:
    """Top-1 co-activation: the share of steps that use both ``i`` and ``j``."""
    used = (counts_NE > 0).astype(np.float64)
    pairs = used.T @ used
    np.fill_diagonal(pairs, 0.0)
    return pairs / max(counts_NE.shape[0], 1)


def coactivation(ids_NTK: np.ndarray, num_experts: int) -> np.ndarray:
    """``C_EE`` (see the module docstring); the diagonal is zero."""
    n, t, k = ids_NTK.shape
    if k >= 2:
        return _pair_counts(ids_NTK, num_experts) / max(n * t, 1)
    return _step_coactivation(step_counts(ids_NTK, num_experts))


@dataclass(frozen=True)
class LayerStats:
    layer: int
    zipf_exponent: float
    step_skew: float
    busiest_share: float
    temporal_locality: float
    persistence: float
    popularity: list[float]  # share of assignments per expert
    coactivation: list[list[float]]

    @property
    def strongest_pair(self) -> tuple[int, int, float]:
        matrix = np.asarray(self.coactivation)
        i, j = np.unravel_index(int(np.argmax(matrix)), matrix.shape)
        return int(i), int(j), float(matrix[i, j])


def layer_stats(ids_NLTK: np.ndarray, num_experts: int) -> list[LayerStats]:
    """Statistics of every layer of a trace, read ``BLOCK_ASSIGNMENTS`` at a time, so that a
    memory-mapped trace larger than memory is described in bounded memory."""
    n, layers, t, k = ids_NLTK.shape
    block = max(1, BLOCK_ASSIGNMENTS // max(t * k, 1))
    stats = []
    for layer in range(layers):
        counts, pairs_EE = [], np.zeros((num_experts, num_experts))
        for first in range(0, n, block):
            ids = np.asarray(ids_NLTK[first : first + block, layer])
            counts.append(step_counts(ids, num_experts))
            if k >= 2:
                pairs_EE += _pair_counts(ids, num_experts)
        counts_NE = np.concatenate(counts)
        together = pairs_EE / max(n * t, 1) if k >= 2 else _step_coactivation(counts_NE)
        total_E = counts_NE.sum(axis=0)
        share = total_E / max(total_E.sum(), 1)
        stats.append(
            LayerStats(
                layer=layer,
                zipf_exponent=zipf_exponent(total_E),
                step_skew=step_skew(counts_NE),
                busiest_share=float(share.max()) if share.size else 0.0,
                temporal_locality=temporal_locality(counts_NE),
                persistence=persistence(counts_NE),
                popularity=share.tolist(),
                coactivation=together.tolist(),
            )
        )
    return stats
