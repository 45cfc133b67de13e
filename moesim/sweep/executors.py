"""Running a sweep's points: local worker processes (one per core by default) or a Ray cluster.

Both hand each row, as it finishes, to ``on_row`` in this process (the store writes it at
once). A point whose worker dies (killed, out of memory) runs again in a fresh worker, at most
``RETRIES`` more times, then becomes an error row; on Ray, ``max_retries`` does the same.
Local workers are spawned children of this process: they ignore Ctrl-C (this process stops
them at once, keeping every row already written) and exit by themselves within
``WATCHDOG_S`` when this process dies, however it dies.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from moesim.errors import MoesimError
from moesim.sweep.identity import ResolvedPoint
from moesim.sweep.point import error_row, run_point

__all__ = ["RETRIES", "WATCHDOG_S", "Task", "run_local", "run_ray", "usable_cores", "worker_count"]

RETRIES = 2
WATCHDOG_S = 0.5
Row = Callable[[dict[str, Any]], None]
# What a worker runs for each point: ``task(base, point, point_id)`` returns its row (a
# picklable, module-level function or a ``functools.partial`` of one); ``run_point`` for sweeps.
Task = Callable[[str, Any, str], dict[str, Any]]


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(requested: int | None, points: int) -> int:
    """``requested`` (default: every usable core), at most the cores and the points."""
    return max(1, min(requested or usable_cores(), usable_cores(), points))


def _watchdog(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_S)
    os._exit(1)  # orphaned: nobody will read the row


def _serve(connection: Connection, parent: int) -> None:
    """A worker's loop: run each ``(task, base, point, id)`` received, send its row back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watchdog, args=(parent,), daemon=True).start()
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        task, *args = job
        connection.send(task(*args))


class _Worker:
    """One spawned worker process and the point it runs, if any."""

    def __init__(self, context: Any) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.job: ResolvedPoint | None = None

    def give(self, base: str, job: ResolvedPoint, task: Task = run_point) -> bool:
        """Send ``job``; False when the worker is gone."""
        self.job = job
        try:
            self.connection.send((task, base, job.point, job.id))
        except OSError:  # it died while idle
            return False
        return True

    def take(self, ready: list[Any]) -> tuple[dict[str, Any] | None, bool]:
        """The row the worker sent, if any, and whether it died (with its point)."""
        if self.connection in ready or self.connection.poll():
            try:
                return self.connection.recv(), False
            except (EOFError, OSError):
                return None, True
        return None, self.process.sentinel in ready

    def stop(self) -> int | None:
        """Kill the process (at once: a worker holds nothing to save); its exit code."""
        self.process.kill()
        self.process.join()
        self.connection.close()
        return self.process.exitcode


def run_local(
    base: str,
    points: list[ResolvedPoint],
    workers: int | None,
    on_row: Row,
    task: Task = run_point,
) -> None:
    """Run ``task`` on ``points`` on ``worker_count(workers, ...)`` processes; one runs in
    this process."""
    count = worker_count(workers, len(points))
    if count == 1:
        for job in points:
            on_row(task(base, job.point, job.id))
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    queue, deaths = deque(points), Counter[str]()
    pool: list[_Worker] = []

    def feed(slot: int) -> None:
        """Give the next point to the worker in ``slot``, replacing it while it is gone."""
        while queue and not pool[slot].give(base, queue[0], task):
            pool[slot].stop()
            pool[slot] = _Worker(context)
        if queue:
            queue.popleft()

    try:
        pool = [_Worker(context) for _ in range(count)]
        for slot in range(count):
            feed(slot)
        while busy := [slot for slot, worker in enumerate(pool) if worker.job is not None]:
            handles = [h for s in busy for h in (pool[s].connection, pool[s].process.sentinel)]
            ready = wait(handles)
            for slot in busy:
                worker, job = pool[slot], pool[slot].job
                row, died = worker.take(ready)
                if died:  # a fresh worker, and the point again
                    code = worker.stop()
                    pool[slot] = _Worker(context)
                    deaths[job.id] += 1
                    if deaths[job.id] <= RETRIES:
                        queue.appendleft(job)
                    else:
                        row = error_row(
                            job.id,
                            f"its worker died {deaths[job.id]} times (exit code {code}: "
                            "killed, or out of memory?)",
                        )
                if row is not None:
                    on_row(row)
                if row is not None or died:
                    pool[slot].job = None
                    feed(slot)
    finally:
        for worker in pool:
            worker.stop()


def _connect(ray: Any, address: str) -> bool:
    """Join (or, for ``local``, start) the cluster; True when this call started Ray."""
    if ray.is_initialized():
        return False
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise MoesimError(
            f"--ray {address}: a ray:// address needs the Ray Client: pip install 'ray[client]'"
        )
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MoesimError(f"--ray {address}: cannot connect: {reason}") from None
    return True


def run_ray(
    base: str, points: list[ResolvedPoint], address: str, on_row: Row, task: Task = run_point
) -> None:
    """``task`` on each point on the Ray cluster at ``address`` (``auto``: the one this
    machine belongs to; ``local``: start one here; ``ray://host:port``: the Ray Client)."""
    try:
        import ray
        from ray.exceptions import RayError
    except ImportError:
        raise MoesimError("--ray needs ray: pip install 'moesim[ray]'") from None
    started = _connect(ray, address)
    remote = ray.remote(max_retries=RETRIES)(task)
    pending: list[Any] = []
    try:
        jobs = {remote.remote(base, job.point, job.id): job for job in points}
        pending = list(jobs)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                try:
                    row = ray.get(ref)
                except RayError as error:  # its worker died more than RETRIES times
                    row = error_row(jobs[ref].id, f"on Ray: {type(error).__name__}")
                on_row(row)
    finally:
        for ref in pending:  # interrupted: nothing left running on the cluster
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
