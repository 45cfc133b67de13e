"""Copies and launches: the host link's transfer curve, memory bandwidth, launch overhead.

On a CPU the "host link" is a copy between two host tensors; on CUDA it is a copy from pinned
host memory to the device, the way buffered experts are brought in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from moesim.calibrate.timing import median_seconds

__all__ = [
    "LAUNCH_BATCH",
    "copy_sizes",
    "measure_host_transfer",
    "measure_launch_overhead",
    "measure_memory_bandwidth",
]

Grid = Literal["full", "quick"]
LAUNCH_BATCH = 200  # launches timed together on a GPU, whose events cannot time one
_KIB = 1024
_LARGEST = {"full": 64 * _KIB**2, "quick": _KIB**2}


def copy_sizes(grid: Grid) -> list[int]:
    """Copy sizes in bytes: 4 KiB, then powers of 4 up to 64 MiB (quick: 1 MiB)."""
    sizes = [4 * _KIB]
    while sizes[-1] * 4 <= _LARGEST[grid]:
        sizes.append(sizes[-1] * 4)
    return sizes


def _filled(size: int, device: torch.device, *, pinned: bool = False) -> torch.Tensor:
    """Bytes with their pages touched (an untouched page reads as a shared zero page)."""
    return torch.empty(size, dtype=torch.uint8, device=device, pin_memory=pinned).fill_(1)


def measure_host_transfer(
    device: torch.device, sizes: list[int], on_size: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Seconds of one host-link copy of each size: a MeasuredCurve dict ``{bytes, seconds}``;
    ``on_size()`` is called after each size."""
    seconds = []
    cpu = torch.device("cpu")
    for size in sizes:
        source = _filled(size, cpu, pinned=device.type == "cuda")
        target = torch.empty(size, dtype=torch.uint8, device=device)
        seconds.append(
            median_seconds(lambda s=source, t=target: t.copy_(s, non_blocking=True), device)
        )
        del source, target
        if on_size is not None:
            on_size()
    return {"bytes": list(sizes), "seconds": seconds}


def measure_memory_bandwidth(device: torch.device, size: int) -> float:
    """Bytes per second of a copy of ``size`` bytes within the device memory, counting the read
    and the write."""
    source = _filled(size, device)
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), device, min_repeats=5)
    return 2.0 * size / seconds


def measure_launch_overhead(device: torch.device) -> float:
    """Seconds of one small eager op, the fixed cost every kernel pays: the median over the
    kinds of glue op an MoE layer issues (elementwise, softmax, top-k, sort, counting, gathers
    and scatters) on a decode step's sizes (64 rows of 256 values, 64 indices)."""
    rows = torch.ones(64, 256, device=device)
    index = torch.arange(64, device=device) % 8
    ops: list[Callable[[], object]] = [
        lambda: torch.add(rows, rows),
        lambda: torch.softmax(rows[:, :8], dim=-1),
        lambda: torch.topk(rows[:, :8], 2, dim=-1),
        lambda: torch.argsort(index, stable=True),
        lambda: torch.bincount(index, minlength=8),
        lambda: rows[index],
        lambda: torch.zeros_like(rows).index_add_(0, index, rows),
        lambda: torch.cat([rows[:32], rows[32:]]),
        lambda: torch.nn.functional.gelu(rows),
    ]
    calls = LAUNCH_BATCH if device.type == "cuda" else 1
    times = [median_seconds(op, device, min_repeats=20, max_repeats=200, calls=calls) for op in ops]
    return float(sorted(times)[len(times) // 2])
