"""Interpolation of a calibrated profile's measured tables.

Times are interpolated piecewise-linearly in log-log space. Below the smallest measured size a
transfer costs the smallest measurement (its latency); beyond the largest, time grows linearly
with size at the last point's rate. A GEMM whose ``k`` or ``n`` lies above the grid takes the
grid edge scaled by its FLOPs ratio, below it the grid edge's time. Zero rows or bytes cost
nothing.
"""

from __future__ import annotations

import numpy as np

from moesim.config import AttentionCurves, GemmTable, MeasuredCurve

__all__ = ["attention_core_time", "curve_time", "gemm_time"]


def _loglog(x: np.ndarray, grid: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Seconds at sizes ``x > 0`` on a measured curve (clamped below, linear beyond)."""
    inside = np.exp(np.interp(np.log(np.maximum(x, grid[0])), np.log(grid), np.log(seconds)))
    return np.where(x > grid[-1], seconds[-1] * x / grid[-1], inside)


def curve_time(curve: MeasuredCurve, bytes_moved: np.ndarray | float) -> np.ndarray:
    """Seconds of transfers of ``bytes_moved`` bytes on a measured curve (element-wise)."""
    size = np.asarray(bytes_moved, dtype=np.float64)
    seconds = _loglog(size, np.asarray(curve.bytes), np.asarray(curve.seconds))
    return np.where(size > 0, seconds, 0.0)


def _bracket(grid: np.ndarray, value: float) -> tuple[int, int, float, float]:
    """Neighbouring grid indices, the log-space weight of the upper one, and the FLOPs scale
    for a value above the grid (below it, the smallest measured size's time: a matmul does not
    get cheaper than its launch)."""
    clamped = min(max(value, grid[0]), grid[-1])
    upper = int(np.searchsorted(grid, clamped))  # grid[upper] >= clamped
    lower = upper if grid[upper] == clamped else upper - 1
    span = np.log(grid[upper]) - np.log(grid[lower])
    weight = 0.0 if span == 0 else (np.log(clamped) - np.log(grid[lower])) / span
    return lower, upper, float(weight), max(value / clamped, 1.0)


def gemm_time(table: GemmTable, rows: np.ndarray | float, k: int, n: int) -> np.ndarray:
    """Seconds of ``(rows x k) @ (k x n)`` matmuls from the table (element-wise over rows)."""
    m = np.asarray(rows, dtype=np.float64)
    if k <= 0 or n <= 0:
        return np.zeros(m.shape)
    grid_m = np.asarray(table.m, dtype=np.float64)
    seconds = np.asarray(table.seconds)
    k0, k1, wk, scale_k = _bracket(np.asarray(table.k, dtype=np.float64), k)
    n0, n1, wn, scale_n = _bracket(np.asarray(table.n, dtype=np.float64), n)
    log_time = np.zeros(m.shape)
    safe = np.maximum(m, grid_m[0])
    for ki, kw in ((k0, 1 - wk), (k1, wk)):
        for ni, nw in ((n0, 1 - wn), (n1, wn)):
            if kw * nw:
                log_time = log_time + kw * nw * np.log(_loglog(safe, grid_m, seconds[ki, ni]))
    return np.where(m > 0, np.exp(log_time) * scale_k * scale_n, 0.0)


def attention_core_time(
    curves: AttentionCurves, work: np.ndarray | float, decode: bool
) -> np.ndarray:
    """Seconds of attention cores reading ``work`` K/V bytes (decode) or doing ``work`` FLOPs
    (prefill), from the measured curves (element-wise)."""
    x = np.asarray(work, dtype=np.float64)
    if decode:
        grid, seconds = curves.decode_kv_bytes, curves.decode_seconds
    else:
        grid, seconds = curves.prefill_flops, curves.prefill_seconds
    return np.where(x > 0, _loglog(x, np.asarray(grid), np.asarray(seconds)), 0.0)
