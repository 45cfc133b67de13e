"""Parameter sweeps: expansion of a sweep file, executors (local pool, Ray), result store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moesim.config import load_scenario
from moesim.errors import ConfigError, MoesimError
from moesim.sweep.executors import run_local, run_ray
from moesim.sweep.spec import LoadedSweep, Point, SweepSpec, load_sweep
from moesim.sweep.store import ResultStore

__all__ = ["LoadedSweep", "Point", "ResultStore", "SweepSpec", "load_sweep", "run_sweep"]

Progress = Callable[[int, int], None]


def _validate(sweep: LoadedSweep) -> None:
    """Every point loads and validates, or the sweep stops before it starts."""
    for point in sweep.points:
        try:
            load_scenario(sweep.base, point.overrides)
        except ConfigError as error:
            raise MoesimError(f"sweep point {point.index} ({point.describe()}): {error}") from None


def run_sweep(
    path: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    fresh: bool = False,
    on_progress: Progress | None = None,
) -> tuple[Path, int, int]:
    """Run the points of the sweep file not yet in ``out``; returns the results file, the
    points run now and the points there are."""
    sweep = load_sweep(path)
    _validate(sweep)
    store = ResultStore(Path(out), fresh=fresh)
    done = store.done()
    todo = [point for point in sweep.points if point.id not in done]
    total, finished = len(sweep.points), len(sweep.points) - len(todo)
    if on_progress is not None:
        on_progress(finished, total)

    def on_row(row: dict) -> None:
        nonlocal finished
        store.add(row)
        finished += 1
        if on_progress is not None:
            on_progress(finished, total)

    base = str(sweep.base)
    try:
        if ray_address is not None:
            run_ray(base, todo, ray_address, on_row)
        else:
            run_local(base, todo, workers, on_row)
    finally:
        results = store.compact({point.id for point in sweep.points})
    return results, len(todo), total
