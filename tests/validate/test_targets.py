"""``benchmarks/validation_targets.py`` on a made-up report folder: issue #12's targets, the
figures computed here by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from moesim.validate import MetricRow, Report

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "validation_targets.py"
_SPEC = importlib.util.spec_from_file_location("validation_targets", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
targets = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = targets  # dataclasses look their module up
_SPEC.loader.exec_module(targets)

GPUS = {"one1": 1, "one2": 1, "one3": 1, "two1": 2, "two2": 2}


def _row(scenario: str, metric: str, error: float, spread: float = 0.05) -> MetricRow:
    return MetricRow(scenario, metric, "timing", 1.0 + error, 1.0, spread, error)


ROWS = [
    _row("one1", "latency_p50_s", -0.04, 0.02),
    _row("one2", "latency_p50_s", 0.08, 0.02),
    _row("one3", "latency_p50_s", -0.02, 0.02),
    _row("two1", "latency_p50_s", -0.12, 0.15),  # beyond 10 %, within its spread
    _row("two2", "latency_p50_s", 0.09, math.nan),  # one repeat: 10 % it is
    _row("one1", "expert_s_per_step", -0.10),
    _row("one2", "expert_s_per_step", 0.20),
    _row("one3", "expert_s_per_step", -0.05),
    _row("two1", "gate_s_per_step", -0.5),  # two ranks: not a one-rank phase
    MetricRow("one1", "tokens_processed", "exact", 7.0, 7.0, 0.0, 0.0),
    MetricRow("two1", "cache_hits", "exact", 3.0, 3.0, 0.0, 0.0),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Report(rows=ROWS, device="cpu", profile="p", repeats=3, date="d").write(tmp_path)
    for scenario, gpus in GPUS.items():
        (tmp_path / scenario).mkdir()
        result = {"scenario": scenario, "gpus": gpus}
        (tmp_path / scenario / "predicted.json").write_text(json.dumps(result))
    return tmp_path


def test_the_latency_and_accounting_targets_by_hand(folder):
    assert targets.ranks(folder) == GPUS
    found = targets.checks(targets.read_rows(folder), GPUS)
    assert [(c.figure, c.met) for c in found] == [
        ("4.0% (3 scenarios)", True),  # median of 4, 8, 2 %
        (
            "max 12.0% (two1, spread 15.0%); median spread 15.0%; 2 of 2 within",
            True,
        ),
        ("-2.0% (3 of 5 under-predicted)", True),  # median of -12, -4, -2, +8, +9 %
        ("2 of 2 match", True),
    ]


def test_a_phase_on_one_rank_fails_when_one_scenario_is_beyond_15_percent(folder):
    (expert,) = targets.phase_checks(targets.read_rows(folder), GPUS)
    assert (expert.phase, expert.scenarios, expert.within, expert.met) == ("expert", 3, 2, False)
    assert expert.median_error == pytest.approx(-0.05)
    assert (expert.min_error, expert.max_error) == pytest.approx((-0.10, 0.20))


def test_targets_fail_beyond_them_and_say_when_nothing_judges_them():
    rows = [_row("one1", "latency_p50_s", 0.06), _row("two1", "latency_p50_s", 0.11, 0.05)]
    found = targets.checks(rows, {"one1": 1, "two1": 2})
    assert [c.met for c in found] == [False, False, False, None]
    assert targets.checks(rows, {})[0].figure == "no one-rank scenario"


def test_the_table_reads_an_old_report_csv_and_names_scenarios_without_ranks(folder, capsys):
    with (folder / "report.csv").open("w", newline="") as stream:  # before abs_error, phase
        writer = csv.writer(stream)
        writer.writerow(["scenario", "metric", "kind", "predicted", "measured", "error", "spread"])
        writer.writerow(["one1", "latency_p50_s", "timing", 0.97, 1.0, -0.03, 0.01])
        writer.writerow(["lost", "latency_p50_s", "timing", 0.5, 1.0, -0.5, 0.01])
    assert targets.main([str(folder)]) == 0
    text = capsys.readouterr().out
    assert f"## {folder}: 2 scenarios, 1 on one rank, 0 on more" in text
    assert (
        "| p50 step latency, one rank: median abs error | 3.0% (1 scenarios) | <= 5% | yes |"
        in text
    )
    assert "Ranks unknown (no predicted.json), left out: lost." in text
    assert targets.main([str(folder / "nothing")]) == 2
