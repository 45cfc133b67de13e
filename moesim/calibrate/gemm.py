"""Measured matmul times: ``(m x k) @ (k x n)`` over a grid of shapes, as a GemmTable dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from moesim.calibrate.device import torch_dtype
from moesim.calibrate.timing import median_seconds

__all__ = ["GEMM_GRIDS", "gemm_grid", "measure_gemm"]

Grid = Literal["full", "quick"]
# weights cycled through per grid: beyond a server CPU's last-level cache (hundreds of MiB)
COLD_BYTES = {"full": 2**30, "quick": 2**20}
Progress = Callable[[str, int, int], None]


def _powers_of_two(low: int, high: int) -> list[int]:
    return [2**p for p in range(low.bit_length() - 1, high.bit_length())]


# (device type, grid) -> (m, k, n); m counts token rows, k and n are weight sizes
GEMM_GRIDS: dict[tuple[str, str], tuple[list[int], list[int], list[int]]] = {
    # n from 8: a router's GEMM has as many columns as experts
    ("cpu", "full"): (_powers_of_two(1, 2048), _powers_of_two(64, 2048), _powers_of_two(8, 2048)),
    ("cuda", "full"): (
        _powers_of_two(1, 16384),
        _powers_of_two(256, 16384),
        _powers_of_two(8, 16384),
    ),
    ("cpu", "quick"): ([1, 4, 16, 64], [32, 64], [32, 64]),
    ("cuda", "quick"): ([1, 4, 16, 64], [32, 64], [32, 64]),
}


def gemm_grid(device: torch.device, grid: Grid) -> tuple[list[int], list[int], list[int]]:
    """The ``(m, k, n)`` grid measured on a device of this type."""
    return GEMM_GRIDS[(device.type, grid)]


def measure_gemm(
    device: torch.device,
    dtype: str,
    grid: Grid,
    on_progress: Progress | None = None,
    *,
    budget_s: float = 0.05,
) -> dict[str, Any]:
    """Seconds of each matmul of the grid: ``{dtype, m, k, n, seconds[i_k][i_n][i_m]}``.

    Each call multiplies by the next weight matrix of a pool larger than the caches
    (``COLD_BYTES``), never one read recently, so weights come from memory as in a model where
    every layer and expert reads its own; token rows stay hot. A cell is the median of repeats
    after a warm-up, the result allocated by ``torch.matmul`` as in a model.
    """
    m_grid, k_grid, n_grid = gemm_grid(device, grid)
    total = len(m_grid) * len(k_grid) * len(n_grid)
    generator = torch.Generator(device=device).manual_seed(0)
    options = {"generator": generator, "device": device, "dtype": torch_dtype(dtype)}
    done = 0
    seconds_KNM: list[list[list[float]]] = []
    cold = COLD_BYTES[grid] // torch_dtype(dtype).itemsize
    pool = torch.randn(max(cold, 2 * max(k_grid) * max(n_grid)), **options)
    cursor = 0  # where the next weight starts: every call reads memory not read for a while

    def next_weight(k: int, n: int) -> torch.Tensor:
        nonlocal cursor
        if cursor + k * n > pool.numel():
            cursor = 0
        weight = pool[cursor : cursor + k * n].view(k, n)
        cursor += k * n
        return weight

    for k in k_grid:
        rows = torch.randn(max(m_grid), k, **options)
        seconds_KNM.append([])
        for n in n_grid:
            seconds_M = []
            for m in m_grid:
                tokens = rows[:m]
                seconds_M.append(
                    median_seconds(
                        lambda a=tokens, k=k, n=n: torch.matmul(a, next_weight(k, n)),
                        device,
                        budget_s=budget_s,
                    )
                )
                done += 1
                if on_progress is not None:
                    on_progress("gemm", done, total)
            seconds_KNM[-1].append(seconds_M)
        del rows
    return {"dtype": dtype, "m": m_grid, "k": k_grid, "n": n_grid, "seconds": seconds_KNM}
