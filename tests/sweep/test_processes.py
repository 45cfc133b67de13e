"""A sweep's processes, killed for real: workers never outlive their parent, and Ctrl-C stops
a sweep at once with every finished row kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.sweep.helpers import LONG, TOKENS, sweep_workers, write_sweep

PATIENCE_S = 120.0  # a bound on waiting for a state, far below LONG's hour (no timing asserted)


def _until(condition, what: str):
    deadline = time.monotonic() + PATIENCE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)
    return value


def _start(spec: Path, out: Path, workers: int) -> subprocess.Popen:
    """``moesim sweep`` in its own process group (as a terminal's job), its stderr in a file
    (a pipe would stay open as long as any worker lives)."""
    command = [sys.executable, "-m", "moesim.cli", "sweep", str(spec), "--out", str(out)]
    with (spec.parent / "stderr.txt").open("w") as stderr:
        return subprocess.Popen(
            [*command, "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    spec = write_sweep(
        tmp_path,
        {"zip": {"workload.steps": [LONG["workload.steps"], LONG["workload.steps"] - 1]}}
        | {"grid": {"workload.batch_size": [LONG["workload.batch_size"]]} | TOKENS},
    )
    parent = _start(spec, tmp_path / "out", workers=2)
    workers = _until(lambda: len(found := sweep_workers(parent.pid)) == 2 and found, "2 workers")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    try:
        _until(lambda: not any(_live(pid) for pid in workers), "the orphaned workers to exit")
    finally:  # never leave them behind, even when the test fails
        for pid in filter(_live, workers):
            os.kill(pid, signal.SIGKILL)


def _live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_the_sweep_at_once_keeping_its_finished_rows(tmp_path):
    steps = [3, 4, 5, 6, LONG["workload.steps"], LONG["workload.steps"] - 1]
    batches = [8, 8, 8, 8, LONG["workload.batch_size"], LONG["workload.batch_size"]]
    zipped = {"workload.steps": steps, "workload.batch_size": batches}
    spec = write_sweep(tmp_path, {"zip": zipped, "grid": TOKENS})
    out = tmp_path / "out"
    parent = _start(spec, out, workers=2)
    _until(lambda: len(list((out / "parts").glob("*.parquet"))) == 4, "the 4 short rows")
    workers = sweep_workers(parent.pid)
    start = time.monotonic()
    os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    parent.wait(timeout=PATIENCE_S)
    err = (tmp_path / "stderr.txt").read_text()
    print(f"Ctrl-C to exit: {time.monotonic() - start:.2f} s")
    assert parent.returncode == 130
    assert err.strip().splitlines()[-1] == "moesim: interrupted" and "Traceback" not in err
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["workload.steps"], r["status"]) for r in rows] == [(s, "ok") for s in steps[:4]]
    assert len(workers) == 2 and not any(_live(pid) for pid in workers)
