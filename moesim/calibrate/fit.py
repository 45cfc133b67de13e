"""Fits of measured figures: ``latency + bytes / bandwidth`` to a curve, peak FLOP/s of a table.

Pure numpy, so that the fits are tested without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "fit_latency_bandwidth",
    "monotone",
    "peak_flops",
]


def fit_latency_bandwidth(
    bytes_moved: Sequence[float], seconds: Sequence[float]
) -> tuple[float, float]:
    """``(latency_s, bytes_per_s)`` minimising the relative error of ``latency + bytes / bw``.

    Residuals are divided by the measured time, so that the small sizes (which set the latency)
    weigh as much as the large ones (which set the bandwidth). A negative intercept is clamped
    to zero and the slope refitted through the origin. When the time does not grow with size
    (all latency), the bandwidth is the best rate seen and the latency the smallest time.
    """
    x = np.asarray(bytes_moved, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("a fit needs at least two (bytes, seconds) points of equal length")
    weight = 1.0 / y
    design = np.stack([np.ones_like(x), x], axis=1) * weight[:, None]
    (latency, slope), *_ = np.linalg.lstsq(design, y * weight, rcond=None)
    if latency < 0:
        latency = 0.0
        slope = np.sum(weight**2 * x * y) / np.sum((weight * x) ** 2)
    if slope <= 0:
        return float(y.min()), float(np.max(x / y))
    return float(latency), float(1.0 / slope)


def peak_flops(table: Mapping[str, Any]) -> float:
    """The highest ``2 m k n / seconds`` over a GEMM table ``{m, k, n, seconds[i_k][i_n][i_m]}``."""
    seconds_KNM = np.asarray(table["seconds"], dtype=np.float64)
    m = np.asarray(table["m"], dtype=np.float64)
    k = np.asarray(table["k"], dtype=np.float64)
    n = np.asarray(table["n"], dtype=np.float64)
    flops_KNM = 2.0 * k[:, None, None] * n[None, :, None] * m[None, None, :]
    return float(np.max(flops_KNM / seconds_KNM))


def monotone(seconds: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): moving
    more bytes never takes less time, so a dip is noise shared with its neighbours."""
    blocks: list[list[float]] = []  # [sum, count]
    for value in seconds:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]
