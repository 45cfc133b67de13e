"""Running a sweep's points: a local process pool (all cores by default) or a Ray cluster.

Both call ``run_point`` and hand each row, as it finishes, to ``on_row`` in this process (the
store writes it at once). On Ray a task whose worker dies is retried (``max_retries``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from moesim.errors import MoesimError
from moesim.sweep.point import run_point
from moesim.sweep.spec import Point

__all__ = ["RAY_RETRIES", "run_local", "run_ray"]

RAY_RETRIES = 3
Row = Callable[[dict[str, Any]], None]


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_local(base: str, points: list[Point], workers: int | None, on_row: Row) -> None:
    """``workers`` processes (default: every core); one worker runs in this process."""
    workers = workers or _cores()
    if workers == 1:
        for point in points:
            on_row(run_point(base, point))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(run_point, base, point) for point in points}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                on_row(future.result())


def run_ray(base: str, points: list[Point], address: str, on_row: Row) -> None:
    """Tasks on the Ray cluster at ``address`` (``auto``: the one this machine belongs to;
    ``local``: start one here)."""
    try:
        import ray
    except ImportError:
        raise MoesimError("--ray needs ray: pip install 'moesim[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise MoesimError(f"--ray {address}: cannot connect: {error}") from None
    task = ray.remote(max_retries=RAY_RETRIES)(run_point)
    try:
        pending = [task.remote(base, point) for point in points]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for row in ray.get(finished):
                on_row(row)
    finally:
        if started:
            ray.shutdown()
