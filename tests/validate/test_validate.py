"""``moesim validate``: the report's numbers are the results' numbers, exact metrics match."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.cli import main
from moesim.validate import validate
from tests.conftest import SIMPLE_PROFILE, SMALL_MOE

MODEL = {**SMALL_MOE, "name": "v"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validation")
    profile = {**SIMPLE_PROFILE, "memory": {**SIMPLE_PROFILE["memory"], "capacity": "64GB"}}
    (root / "profile.yaml").write_text(yaml.safe_dump(profile))
    scenarios = root / "scenarios"
    scenarios.mkdir()
    for name, policies in [
        ("dynamic", {"gating": {"name": "dynamic"}}),
        (
            "buffered",
            {
                "gating": {"name": "dynamic"},
                "cache": {"name": "lifo", "slots_per_layer": 3, "step_aware": True},
            },
        ),
    ]:
        scenario = {
            "name": name,
            "seed": 5,
            "model": MODEL,
            "cluster": {"nodes": 1, "gpus_per_node": 1, "device": "simple"},
            "workload": {
                "phase": "decode",
                "batch_size": 16,
                "seq_len": 8,
                "steps": 4,
                "routing": {"source": "synthetic", "distribution": "zipf", "skew": 1.0},
            },
            "policies": policies,
        }
        (scenarios / f"{name}.yaml").write_text(yaml.safe_dump(scenario))
    return root


@pytest.fixture(scope="module")
def report(folder):
    out = folder / "report"
    return validate(
        [str(folder / "scenarios")], profile=folder / "profile.yaml", out=out, repeats=2
    ), out


def _csv(out: Path) -> list[dict]:
    with (out / "report.csv").open() as stream:
        return list(csv.DictReader(stream))


def test_every_exact_metric_matches_and_the_report_says_so(report):
    result, out = report
    exact = [r for r in result.rows if r.kind == "exact"]
    assert {r.metric for r in exact} >= {"tokens_processed", "alltoall_bytes", "cache_hits"}
    assert result.mismatches == []
    assert (
        f"Exact accounting metrics: {len(exact)} of {len(exact)} match."
        in (out / "report.md").read_text()
    )


def test_measured_is_the_median_of_the_saved_runs_and_error_is_relative(report):
    _, out = report
    rows = {(r["scenario"], r["metric"]): r for r in _csv(out)}
    for scenario in ("dynamic", "buffered"):
        predicted = json.loads((out / scenario / "predicted.json").read_text())
        runs = [json.loads((out / scenario / f"measured-{i}.json").read_text()) for i in (1, 2)]
        p50 = [run["latency_s"]["p50"] for run in runs]
        row = rows[scenario, "latency_p50_s"]
        assert float(row["measured"]) == pytest.approx(np.median(p50))
        assert float(row["predicted"]) == pytest.approx(predicted["latency_s"]["p50"])
        assert float(row["error"]) == pytest.approx(
            (predicted["latency_s"]["p50"] - np.median(p50)) / np.median(p50)
        )
        assert float(row["spread"]) == pytest.approx((max(p50) - min(p50)) / np.median(p50))


def test_the_plot_is_a_png_and_the_markdown_has_a_summary_row_per_timing_metric(report):
    _, out = report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    for metric in ("latency_p50_s", "expert_s_per_step", "peak_bytes"):
        assert f"| {metric} | 2 |" in text


def test_cli_fails_a_tolerance_and_refuses_one_on_an_exact_metric(folder, capsys):
    args = [
        "validate",
        str(folder / "scenarios" / "dynamic.yaml"),
        "--profile",
        str(folder / "profile.yaml"),
        "--out",
        str(folder / "cli"),
        "--repeats",
        "1",
    ]
    assert main([*args, "--tolerance", "latency_p50_s=0"]) == 1
    assert "latency_p50_s error" in capsys.readouterr().err
    assert main([*args, "--tolerance", "tokens_dropped=0.1"]) == 2
    assert "must match exactly" in capsys.readouterr().err
    assert (
        main(
            [
                "validate",
                str(folder / "nothing"),
                "--profile",
                str(folder / "profile.yaml"),
                "--out",
                str(folder / "cli"),
            ]
        )
        == 2
    )
    assert "no such scenario file or folder" in capsys.readouterr().err


def test_cli_runs_the_reference_executor_and_writes_its_result(folder, tmp_path, capsys):
    scenario = folder / "scenarios" / "dynamic.yaml"
    code = main(
        [
            "run",
            str(scenario),
            "--executor",
            "reference",
            "--profile",
            str(folder / "profile.yaml"),
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert printed["executor"] == saved["executor"] == "reference"
    assert saved["tokens"]["processed"] == 2 * 16 * 2 * 4  # layers x tokens x top-k x steps
    assert main(["run", str(scenario), "--profile", str(tmp_path / "missing.yaml")]) == 2
    assert "no such hardware profile file" in capsys.readouterr().err


def test_cli_calibrate_writes_a_profile_that_runs_a_scenario(folder, tmp_path, capsys):
    profile = tmp_path / "cpu.yaml"
    assert main(["calibrate", "--grid", "quick", "--world-sizes", "2", "--out", str(profile)]) == 0
    assert "GFLOP/s" in capsys.readouterr().out
    loaded = yaml.safe_load(profile.read_text())
    assert loaded["compute"]["provenance"]["source"] == "calibrated"
    assert sorted(loaded["links"]["nvlink"]["alltoall"]) == [2]
    assert (
        main(
            ["run", str(folder / "scenarios" / "dynamic.yaml"), "--profile", str(profile), "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["device"] == "local-cpu"
    assert main(["calibrate", "--world-sizes", "1", "--out", str(profile)]) == 2


def test_a_prediction_where_nothing_was_measured_is_infinitely_wrong(report):
    """compare(): predicted 4 MiB of KV cache against a run that allocated none."""
    import math

    from moesim.metrics import Result
    from moesim.validate import compare

    _, out = report
    predicted = Result.model_validate_json((out / "dynamic" / "predicted.json").read_text())
    measured = Result.model_validate_json((out / "dynamic" / "measured-1.json").read_text())
    memory = measured.memory.model_copy(update={"kv_cache_bytes_per_device": [0.0]})
    rows = {
        r.metric: r for r in compare(predicted, [measured.model_copy(update={"memory": memory})])
    }
    assert math.isinf(rows["kv_cache_bytes"].error) and rows["kv_cache_bytes"].error > 0


@pytest.mark.parametrize(
    ("tolerance", "message"),
    [
        ("latency_p5_s=0.1", "unknown metric"),
        ("timing=nan", "expected a fraction"),
        ("memory=-1", "expected a fraction"),
    ],
)
def test_cli_refuses_tolerances_it_cannot_check(folder, capsys, tolerance, message):
    code = main(
        [
            "validate",
            str(folder / "scenarios"),
            "--profile",
            str(folder / "profile.yaml"),
            "--out",
            str(folder / "never"),
            "--tolerance",
            tolerance,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err
    assert not (folder / "never").exists()


def test_scenario_folders_stay_inside_out_and_are_unique():
    from moesim.validate import scenario_folders

    names = ["../x", "/tmp/x", "x", "X", "a b/c", "report.md", "...", ".hidden", "ok.v2"]
    assert scenario_folders(names) == [
        "x",
        "tmp-x",
        "x-2",
        "X-3",
        "a-b-c",
        "report.md-2",
        "scenario",
        "hidden",
        "ok.v2",
    ]


def test_same_and_escaping_names_write_only_inside_out_and_one_repeat_has_no_spread(
    folder, tmp_path, capsys
):
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    data = yaml.safe_load((folder / "scenarios" / "dynamic.yaml").read_text())
    for file, name in (("a.yaml", "../escape"), ("b.yaml", "../escape")):
        (scenarios / file).write_text(yaml.safe_dump({**data, "name": name}))
    (tmp_path / "measured-9.json").write_text("kept")  # what ../escape would have deleted
    out = tmp_path / "nested" / "out"  # a missing parent is created
    args = ["validate", str(scenarios), "--profile", str(folder / "profile.yaml")]
    assert main([*args, "--out", str(out), "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "note: one repeat of each real run: no spread to read the errors against" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["measured-9.json", "nested", "scenarios"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["escape", "escape-2"]
    for name in ("escape", "escape-2"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "measured-1.json",
            "predicted.json",
        ]
    rows = _csv(out)
    assert {r["scenario"] for r in rows} == {"escape", "escape-2"}
    assert all(r["spread"] == "nan" for r in rows)
    text = (out / "report.md").read_text()
    assert "- NOTE: one repeat of each real run" in text
    assert "calibration not measured (profile given)" in text


def test_the_report_says_when_the_load_differed():
    from moesim.validate import Report

    report = Report(rows=[], device="cpu", profile="p", repeats=3, date="d")
    report.calibration_load, report.reference_load = (0.5, 0.7), (1.2, 1.4)
    assert report.notes() == []
    report.reference_load = (1.6, 1.8)
    assert report.notes() == [
        "machine load differed: 0.60 during calibration, 1.70 during the reference runs "
        "(1-minute load average); timing errors may come from the load, not the model"
    ]
    assert "calibration 0.50 -> 0.70, reference runs 1.60 -> 1.80" in report.markdown()


def _no_calibration(*args, **kwargs):
    raise AssertionError("calibrated although the output cannot be written")


@pytest.mark.parametrize("command", ["calibrate", "validate"])
def test_an_unwritable_out_fails_before_calibrating(folder, tmp_path, capsys, monkeypatch, command):
    import moesim.calibrate

    monkeypatch.setattr(moesim.calibrate, "calibrate_profile", _no_calibration)
    blocker = tmp_path / "file"
    blocker.write_text("")
    if command == "calibrate":
        target = blocker / "x.yaml"
        args = ["calibrate", "--out", str(target)]
        expected = f"--out {target}: {blocker} exists and is not a folder"
    else:
        target = blocker / "report"
        args = ["validate", str(folder / "scenarios"), "--out", str(target)]
        expected = f"--out: cannot write into {target}: Not a directory"
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"moesim: error: {expected}"


def test_calibrate_creates_a_missing_parent_folder_first(tmp_path, capsys, monkeypatch):
    import moesim.calibrate

    def calibrated(*args, **kwargs):
        assert (tmp_path / "runs").is_dir()  # created before measuring
        return SIMPLE_PROFILE

    monkeypatch.setattr(moesim.calibrate, "calibrate_profile", calibrated)
    assert main(["calibrate", "--out", str(tmp_path / "runs" / "cpu.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "runs" / "cpu.yaml").read_text())["name"] == "simple"
