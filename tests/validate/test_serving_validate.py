"""``moesim validate`` on serving scenarios: real-time metrics against the prediction, the
replay runs exactly the simulator's steps, the report says so."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.cli import main
from moesim.config import load_scenario
from moesim.metrics import StepRecords
from moesim.sim.serving import simulate_serving
from moesim.validate import replay_row, validate
from moesim.validate.runner import token_level
from tests.conftest import SIMPLE_PROFILE, SMALL_MOE

REQUESTS = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving-validation")
    profile = {**SIMPLE_PROFILE, "memory": {**SIMPLE_PROFILE["memory"], "capacity": "64GB"}}
    (root / "profile.yaml").write_text(yaml.safe_dump(profile))
    scenarios = root / "scenarios"
    scenarios.mkdir()
    scenario = {
        "name": "serving",
        "seed": 5,
        "model": {**SMALL_MOE, "name": "v"},
        "cluster": {"nodes": 1, "gpus_per_node": 1, "device": "simple"},
        "workload": {
            "phase": "serving",
            "requests": {
                "count": REQUESTS,
                "arrival": {"process": "poisson", "rate": 500.0},
                "prompt_tokens": {"distribution": "uniform", "low": 4, "high": 24},
                "output_tokens": {"distribution": "uniform", "low": 2, "high": 6},
            },
            "routing": {"source": "synthetic"},
        },
        "policies": {"gating": {"name": "dynamic"}, "scheduler": {"name": "continuous"}},
    }
    (scenarios / "serving.yaml").write_text(yaml.safe_dump(scenario))
    return root


@pytest.fixture(scope="module")
def report(folder):
    out = folder / "report"
    return validate(
        [str(folder / "scenarios")], profile=folder / "profile.yaml", out=out, repeats=2
    ), out


def _simulated(folder: Path):
    path = folder / "scenarios" / "serving.yaml"
    scenario = load_scenario(path, [f"cluster.device={folder / 'profile.yaml'}"])
    return simulate_serving(token_level(scenario))


def test_the_replay_runs_exactly_the_simulators_steps(folder, report):
    result, out = report
    simulated = _simulated(folder).steps
    (replay,) = result.replays
    assert replay.steps == replay.measured_steps == simulated.tokens.size
    assert replay.token_mismatches == 0
    with (out / "serving" / "replay.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["tokens"]) for r in rows] == simulated.tokens.tolist()
    np.testing.assert_allclose([float(r["predicted_s"]) for r in rows], simulated.latency_s)
    measured = np.array([[float(r[f"measured_{i}_s"]) for r in rows] for i in (1, 2)])
    errors = (simulated.latency_s - np.median(measured, axis=0)) / np.median(measured, axis=0)
    assert replay.median_abs_error == pytest.approx(np.median(np.abs(errors)))
    assert replay.median_error == pytest.approx(np.median(errors))


def test_every_request_completes_on_both_sides_and_real_time_metrics_are_medians(report):
    result, out = report
    rows = {r.metric: r for r in result.rows}
    assert rows["requests_completed"].predicted == rows["requests_completed"].measured == REQUESTS
    assert rows["tokens_processed"].matches and result.mismatches == []
    runs = [json.loads((out / "serving" / f"measured-{i}.json").read_text()) for i in (1, 2)]
    predicted = json.loads((out / "serving" / "predicted.json").read_text())
    ttft = [run["serving"]["ttft_s"]["p99"] for run in runs]
    row = rows["ttft_p99_s"]
    assert row.measured == pytest.approx(np.median(ttft))
    assert row.predicted == pytest.approx(predicted["serving"]["ttft_s"]["p99"])
    assert row.error == pytest.approx((row.predicted - row.measured) / row.measured)
    assert rows["replay_latency_mean_s"].predicted == pytest.approx(
        np.mean(_simulated(out.parent).steps.latency_s)
    )


def test_the_report_has_the_replay_table_and_plot(report):
    result, out = report
    text = (out / "report.md").read_text()
    assert "## Serving replay: step latency, one to one" in text
    (replay,) = result.replays
    assert f"| serving | {replay.steps} | yes |" in text
    assert (out / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "replay.csv").open() as stream:
        (row,) = list(csv.DictReader(stream))
    assert int(row["steps"]) == replay.steps and float(row["median_error"]) == replay.median_error


def _steps(latency, tokens) -> StepRecords:
    steps = StepRecords.empty(1)
    n = len(latency)
    return StepRecords(
        **{
            **{k: np.zeros((n, *v.shape[1:])) for k, v in steps.__dict__.items()},
            "latency_s": np.array(latency, dtype=float),
            "tokens": np.array(tokens),
        }
    )


def test_replay_errors_by_hand():
    """Predicted 1, 3, 6 ms against medians of 2, 2, 4: errors -50%, +50%, +50%."""
    predicted = _steps([1e-3, 3e-3, 6e-3], [4, 1, 1])
    measured = [_steps([2e-3, 1e-3, 4e-3], [4, 1, 1]), _steps([2e-3, 3e-3, 4e-3], [4, 2, 1])]
    row = replay_row("s", predicted, measured)
    assert row.median_abs_error == pytest.approx(0.5)
    assert row.median_error == pytest.approx(0.5)
    assert row.p90_abs_error == pytest.approx(0.5)
    assert row.median_spread == pytest.approx(0.0)  # spreads 0, 1, 0
    assert row.token_mismatches == 0  # the first repeat's tokens are the plans' tokens
    assert row.predicted_s == pytest.approx(10e-3) and row.measured_s == pytest.approx(8e-3)
    shorter = replay_row("s", predicted, [_steps([2e-3, 2e-3], [4, 1])])
    assert shorter.token_mismatches == 1 and math.isnan(shorter.median_spread)


def test_cli_without_replay_writes_no_replay_and_checks_serving_tolerances(folder, capsys):
    out = folder / "no-replay"
    args = ["validate", str(folder / "scenarios"), "--profile", str(folder / "profile.yaml")]
    tolerance = ["--tolerance", "ttft_p99_s=0"]
    assert main([*args, "--out", str(out), "--repeats", "1", "--no-replay", *tolerance]) == 1
    captured = capsys.readouterr()
    assert "ttft_p50_s" in captured.out and "serving replay" not in captured.out
    assert "serving: ttft_p99_s error" in captured.err
    assert not (out / "replay.csv").exists() and not (out / "serving" / "replay.csv").exists()
    assert "Serving replay" not in (out / "report.md").read_text()
