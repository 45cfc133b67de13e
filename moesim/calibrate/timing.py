"""Timing one operation: warm-up, then the median of repeats, stopped by a time budget.

A CPU is timed with ``time.perf_counter``; a GPU with CUDA events around the calls, waited on.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["median_seconds", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(run: Callable[[], object], device: torch.device, calls: int) -> float:
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    for _ in range(calls):
        run()
    return time.perf_counter() - begin


def median_seconds(
    run: Callable[[], object],
    device: torch.device,
    *,
    budget_s: float = 0.05,
    min_repeats: int = 3,
    max_repeats: int = 30,
    warmup: int = 1,
    calls: int = 1,
) -> float:
    """Median seconds of one ``run()`` on ``device`` (the caller makes it current).

    Each sample times ``calls`` back-to-back calls and divides. Samples are taken until
    ``budget_s`` is spent and ``min_repeats`` are in, or ``max_repeats`` are in.
    """
    for _ in range(warmup):
        run()
    synchronize(device)
    samples: list[float] = []
    spent_s = 0.0
    while len(samples) < max_repeats and (len(samples) < min_repeats or spent_s < budget_s):
        seconds = _sample(run, device, calls)
        spent_s += seconds
        samples.append(seconds / calls)
    return float(statistics.median(samples))
