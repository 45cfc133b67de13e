"""A failing point is a row, not the end of the sweep; what can be checked is checked first;
a dead worker's point runs again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from moesim.cli import main
from moesim.errors import MoesimError
from moesim.sweep import ResultStore, run_sweep
from tests.sweep.helpers import TOKENS, sweep_workers, write_sweep, zip_after_long


def _bad_ids_trace(path: Path) -> Path:
    """A trace whose structure is sound but whose ids are not the tiny model's (8 experts):
    only a run finds out."""
    np.savez(path, expert_ids=np.full((2, 2, 16, 2), 99, dtype=np.int32))
    return path


def test_a_point_failing_at_run_time_is_an_error_row_and_the_rest_run(tmp_path, capsys):
    bad = str(_bad_ids_trace(tmp_path / "bad.npz"))
    spec = write_sweep(
        tmp_path, {"grid": {"workload.batch_size": [4, 8], "workload.routing.fit": [None, bad]}}
    )
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "2 of 4 points failed" in err and "Traceback" not in err
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error"]
    for row in rows[1::2]:
        assert "bad.npz" in row["error"] and "\n" not in row["error"]
        assert row["throughput_tokens_per_s"] is None
    assert all(r["throughput_tokens_per_s"] > 0 for r in rows[::2])
    # a rerun runs the failed points again, and only them
    outcome = run_sweep(spec, out, workers=1)
    assert (outcome.ran, outcome.failed) == (2, 2)
    assert len(ResultStore(out).done()) == 2 and len(ResultStore(out).failed()) == 2


def test_files_the_points_name_are_checked_before_anything_runs(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a trace")
    for fit in (tmp_path / "missing.npz", garbage):
        spec = write_sweep(
            tmp_path, {"grid": {"workload.batch_size": [4], "workload.routing.fit": [str(fit)]}}
        )
        with pytest.raises(MoesimError, match=r"sweep point 0 \(.*\): .*npz") as caught:
            run_sweep(spec, tmp_path / "out")
        assert fit.name in str(caught.value)
        assert not (tmp_path / "out").exists()


def test_a_point_whose_worker_is_killed_runs_again_then_is_an_error_row(tmp_path, monkeypatch):
    """Points: a long one, two short ones, on two workers. When each short row arrives, every
    worker is killed with SIGKILL: the long point runs in a second worker (one retry) and
    dies there too; the short ones are unharmed."""
    monkeypatch.setattr("moesim.sweep.executors.RETRIES", 1)
    spec = write_sweep(tmp_path, zip_after_long(3, 4))
    killed = []

    def kill_every_worker(done: int, total: int) -> None:
        if 0 < done < total and len(killed) < 2 * done:
            for pid in sweep_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    outcome = run_sweep(spec, tmp_path / "out", workers=2, on_progress=kill_every_worker)
    rows = pq.read_table(outcome.results).to_pylist()
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert "its worker died 2 times" in rows[0]["error"] and "-9" in rows[0]["error"]
    reference = pq.read_table(
        run_sweep(
            write_sweep(
                tmp_path,
                {"grid": TOKENS, "zip": {"workload.steps": [3, 4], "workload.batch_size": [8, 8]}},
                "r.yaml",
            ),
            tmp_path / "ref",
            workers=1,
        ).results
    ).to_pylist()
    keep = ("point_id", "throughput_tokens_per_s", "tokens.processed")
    assert [{k: r[k] for k in keep} for r in rows[1:]] == [
        {k: r[k] for k in keep} for r in reference
    ]
    assert outcome.failed == 1 and sweep_workers() == []
