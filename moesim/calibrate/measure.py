"""Running every benchmark of a calibration on one device, in order, reporting progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from moesim.calibrate import attention, collectives, copies, gemm
from moesim.calibrate.device import running_on
from moesim.calibrate.fit import monotone

__all__ = ["Measurements", "measure_all", "significant"]

Grid = Literal["full", "quick"]
Progress = Callable[[str, int, int], None]
_DIGITS = 4  # significant digits kept of a measured or fitted figure


def significant(value: float) -> float:
    """``value`` to the significant digits a profile keeps."""
    return float(f"{value:.{_DIGITS}g}")


def _rounded_curve(curve: dict[str, Any]) -> dict[str, Any]:
    """The curve made non-decreasing (``fit.monotone``), to 4 significant digits."""
    seconds = monotone(curve["seconds"])
    return {"bytes": curve["bytes"], "seconds": [significant(s) for s in seconds]}


@dataclass(frozen=True)
class Measurements:
    """Raw results: a GemmTable dict and MeasuredCurve dicts with times to 4 significant
    digits, and the single figures in SI units."""

    gemm: dict[str, Any]
    attention: dict[str, Any]
    host_transfer: dict[str, Any]
    memory_bytes_per_s: float
    launch_overhead_s: float
    alltoall: dict[int, dict[str, Any]]  # world size -> curve


def measure_all(
    device: torch.device, dtype: str, grid: Grid, world_sizes: list[int], report: Progress
) -> Measurements:
    """GEMMs, copies, launches and attention cores on ``device`` (one thread on a CPU), then
    the all-to-alls
    among ``world_sizes`` processes; ``report(stage, done, total)`` after each measurement."""
    sizes = copies.copy_sizes(grid)
    copy_steps = len(sizes) + 4
    done = 0

    def copied() -> None:
        nonlocal done
        done += 1
        report("copies", done, copy_steps)

    with running_on(device):
        table = gemm.measure_gemm(device, dtype, grid, report)
        transfer = copies.measure_host_transfer(device, sizes, copied)
        memory_bytes_per_s = copies.measure_memory_bandwidth(
            device, max(sizes[-1], gemm.COLD_BYTES[grid] // 2)
        )
        copied()
        launch_s = copies.measure_launch_overhead(device)
        copied()
        cores = attention.measure_attention(device, dtype, grid, copied)

    alltoall = {}
    for index, ranks in enumerate(world_sizes):
        curve = collectives.measure_alltoall(device, ranks, collectives.alltoall_sizes(grid))
        alltoall[ranks] = _rounded_curve(curve)
        report("alltoall", index + 1, len(world_sizes))

    seconds_KNM = [[[significant(s) for s in row] for row in plane] for plane in table["seconds"]]
    return Measurements(
        gemm={**table, "seconds": seconds_KNM},
        attention={
            **cores,
            "decode_seconds": [significant(s) for s in cores["decode_seconds"]],
            "prefill_seconds": [significant(s) for s in cores["prefill_seconds"]],
        },
        host_transfer=_rounded_curve(transfer),
        memory_bytes_per_s=memory_bytes_per_s,
        launch_overhead_s=launch_s,
        alltoall=alltoall,
    )
