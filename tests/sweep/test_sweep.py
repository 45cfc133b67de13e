"""Sweeps: expansion, validation up front, rows that do not fit, resume, Ray, plots."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from moesim.cli import main
from moesim.errors import ConfigError, MoesimError
from moesim.sweep import Point, ResultStore, load_sweep, resolve_points, run_sweep
from moesim.sweep.executors import run_local
from tests.conftest import SCENARIOS

TINY = SCENARIOS / "tiny" / "tiny-dynamic.yaml"


def _write(folder: Path, spec: dict, name="sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"base": str(TINY), **spec}))
    return path


def test_grid_zip_and_random_expand_as_a_product(tmp_path):
    spec = {
        "grid": {
            "workload.batch_size": [4, 8, 16],
            "policies.gating": [{"name": "dynamic"}, {"name": "static", "capacity_factor": 2.0}],
        },
        "zip": {"cluster.nodes": [1, 2], "workload.steps": [3, 4]},
        "random": {
            "n": 5,
            "seed": 7,
            "params": {
                "workload.routing.skew": {"uniform": [0.0, 2.0]},
                "workload.seq_len": {"randint": [8, 64]},
            },
        },
    }
    sweep = load_sweep(_write(tmp_path, spec))
    assert len(sweep.points) == 3 * 2 * 2 * 5
    first = dict(sweep.points[0].params)
    assert first["workload.batch_size"] == 4 and first["cluster.nodes"] == 1
    skews = [dict(p.params)["workload.routing.skew"] for p in sweep.points[:5]]
    assert len(set(skews)) == 5 and all(0.0 <= s <= 2.0 for s in skews)
    again = load_sweep(_write(tmp_path, spec, "again.yaml"))
    assert again.points == sweep.points  # deterministic
    ids = [p.id for p in resolve_points(sweep)]
    assert ids == [p.id for p in resolve_points(again)] and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"zip": {"a.b": [1, 2], "c.d": [1]}}, None),
        ({"random": {"n": 2, "params": {"x.y": {"uniform": [2, 1]}}}}, "random.params.x.y"),
        ({"grid": {"workload.batch_size": []}}, None),
    ],
)
def test_malformed_sweep_files_name_the_file(tmp_path, spec, field):
    with pytest.raises(ConfigError) as caught:
        load_sweep(_write(tmp_path, spec))
    assert "sweep.yaml" in str(caught.value)
    if field:
        assert field in str(caught.value)


def test_one_bad_point_stops_the_sweep_before_anything_runs(tmp_path):
    spec = {"grid": {"workload.batch_size": [4, -1]}}
    with pytest.raises(MoesimError, match=r"sweep point 1 \(workload.batch_size=-1\)"):
        run_sweep(_write(tmp_path, spec), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_point_that_does_not_fit_is_a_row_not_a_crash(tmp_path):
    spec = {"grid": {"cluster.device.memory.capacity": ["80GB", "1KB"]}}
    outcome = run_sweep(_write(tmp_path, spec), tmp_path / "out", workers=1)
    rows = pq.read_table(outcome.results).to_pylist()
    assert (outcome.ran, outcome.total, outcome.failed) == (2, 2, 0)
    assert [r["status"] for r in rows] == ["ok", "out_of_memory"]
    assert "out of memory" in rows[1]["error"] and rows[1]["throughput_tokens_per_s"] is None


def test_a_killed_sweep_resumes_losing_and_repeating_nothing(tmp_path, monkeypatch):
    spec = _write(tmp_path, {"grid": {"workload.batch_size": [2, 4, 6, 8, 10, 12]}})
    full = run_sweep(spec, tmp_path / "full", workers=1).results
    reference = {
        r["point_id"]: r["throughput_tokens_per_s"] for r in pq.read_table(full).to_pylist()
    }

    calls = []

    def dying(base, points, workers, on_row):  # finishes 4 points, then the process dies
        def counted(row):
            on_row(row)
            calls.append(row["point_id"])
            if len(calls) == 4:
                raise KeyboardInterrupt

        run_local(base, points, 1, counted)

    monkeypatch.setattr("moesim.sweep.run_local", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "out", workers=1)
    assert len(ResultStore(tmp_path / "out").done()) == 4
    monkeypatch.undo()
    rerun = []
    monkeypatch.setattr(
        "moesim.sweep.run_local",
        lambda base, points, workers, on_row: (
            rerun.extend(p.id for p in points),
            run_local(base, points, 1, on_row),
        ),
    )
    outcome = run_sweep(spec, tmp_path / "out", workers=1)
    assert (outcome.ran, outcome.total) == (2, 6) and set(rerun).isdisjoint(calls)
    rows = pq.read_table(outcome.results).to_pylist()
    assert [r["point"] for r in rows] == list(range(6))
    assert {r["point_id"]: r["throughput_tokens_per_s"] for r in rows} == reference


def test_two_local_workers_and_a_local_ray_give_the_same_rows(tmp_path):
    import ray

    spec = _write(tmp_path, {"grid": {"workload.batch_size": [2, 4, 8], "workload.steps": [2, 3]}})
    pool = run_sweep(spec, tmp_path / "pool", workers=2).results
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_sweep(spec, tmp_path / "ray", ray_address="local").results
    finally:
        ray.shutdown()
    keep = ("point_id", "throughput_tokens_per_s", "latency_s.p99", "tokens.processed")
    a = [{k: r[k] for k in keep} for r in pq.read_table(pool).to_pylist()]
    b = [{k: r[k] for k in keep} for r in pq.read_table(on_ray).to_pylist()]
    assert a == b and len(a) == 6


def test_cli_sweep_then_plot_writes_a_png_with_a_line_per_hue(tmp_path, capsys):
    spec = _write(
        tmp_path,
        {
            "grid": {
                "workload.batch_size": [4, 8],
                "policies.gating": [{"name": "dynamic"}, {"name": "static"}],
            }
        },
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "4 points: 4 run now" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 0
    assert "0 run now, 4 already" in capsys.readouterr().out
    image = tmp_path / "p.png"
    assert (
        main(
            [
                "plot",
                str(tmp_path / "out"),
                "--x",
                "workload.batch_size",
                "--y",
                "throughput_tokens_per_s",
                "--hue",
                "policies.gating",
                "--out",
                str(image),
            ]
        )
        == 0
    )
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 5000
    assert main(["plot", str(tmp_path / "out"), "--x", "nope", "--y", "latency_s.p50"]) == 2
    assert "no such column" in capsys.readouterr().err


def test_a_peak_above_capacity_is_out_of_memory_with_its_metrics(tmp_path):
    from moesim.api import load_scenario, run

    result, _ = run(load_scenario(TINY))
    resident = (
        result.memory.weights_bytes_per_device[0] + result.memory.kv_cache_bytes_per_device[0]
    )
    between = (resident + max(result.memory.peak_bytes_per_device)) / 2
    spec = _write(tmp_path, {"grid": {"cluster.device.memory.capacity": [between]}})
    (row,) = pq.read_table(run_sweep(spec, tmp_path / "out", workers=1).results).to_pylist()
    assert row["status"] == "out_of_memory" and "peak" in row["error"]
    assert row["throughput_tokens_per_s"] == pytest.approx(result.throughput_tokens_per_s)


def test_the_table_holds_the_sweep_files_points_only(tmp_path):
    first = _write(tmp_path, {"grid": {"workload.batch_size": [4, 8]}})
    run_sweep(first, tmp_path / "out", workers=1)
    second = _write(tmp_path, {"grid": {"workload.batch_size": [8, 16]}})
    outcome = run_sweep(second, tmp_path / "out", workers=1)
    assert (outcome.ran, outcome.total) == (1, 2)  # batch 8 was already there
    rows = pq.read_table(outcome.results).to_pylist()
    assert sorted(r["workload.batch_size"] for r in rows) == [8, 16]
    assert len(ResultStore(tmp_path / "out").done()) == 3  # batch 4's part stays on disk


def test_point_overrides_read_back_as_the_values_swept() -> None:
    """JSON writes 1e-07, which YAML reads as a string: overrides are written as YAML."""
    values = [1e-07, 1e20, 2.5, 3, "dynamic", {"name": "static", "capacity_factor": 1e-7}, None]
    point = Point(index=0, params=tuple((f"k{i}", v) for i, v in enumerate(values)))
    read = [yaml.safe_load(override.split("=", 1)[1]) for override in point.overrides]
    assert read == values
