"""Parameter sweeps: expansion of a sweep file, executors (local pool, Ray), result store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moesim.sweep.executors import run_local, run_ray, worker_count
from moesim.sweep.identity import ResolvedPoint, resolve_points
from moesim.sweep.spec import MAX_POINTS, LoadedSweep, Point, SweepSpec, load_sweep
from moesim.sweep.store import ResultStore

__all__ = [
    "MAX_POINTS",
    "LoadedSweep",
    "Point",
    "ResolvedPoint",
    "ResultStore",
    "SweepOutcome",
    "SweepSpec",
    "load_sweep",
    "resolve_points",
    "run_sweep",
]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep did: its table, the points run now, the points there are, those whose
    row is an error, and the local workers used (0 on Ray)."""

    results: Path
    ran: int
    total: int
    failed: int
    workers: int


def run_sweep(
    path: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    fresh: bool = False,
    on_progress: Progress | None = None,
) -> SweepOutcome:
    """Run the points of the sweep file whose result is not yet in ``out`` (a failed point
    runs again); every point is validated first."""
    sweep = load_sweep(path)
    points = resolve_points(sweep)
    store = ResultStore(Path(out), fresh=fresh)
    done = store.done()
    todo = list({p.id: p for p in points if p.id not in done}.values())  # a repeated point once
    total, finished = len(points), len(points) - len(todo)
    failures: set[str] = set()
    if on_progress is not None:
        on_progress(finished, total)

    def on_row(row: dict) -> None:
        nonlocal finished
        store.add(row)
        if row["status"] == "error":
            failures.add(row["point_id"])
        finished += 1
        if on_progress is not None:
            on_progress(finished, total)

    base = str(sweep.base)
    count = 0 if ray_address is not None else worker_count(workers, len(todo))
    try:
        if ray_address is not None:
            run_ray(base, todo, ray_address, on_row)
        else:
            run_local(base, todo, count, on_row)
    finally:
        results = store.compact(points)
    failed = sum(p.id in failures for p in points)
    return SweepOutcome(results, len(todo), total, failed, count)
