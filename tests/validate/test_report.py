"""The validation report on made-up comparisons: signed and absolute errors over scenarios,
per metric and per phase, as computed here by hand."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from moesim.validate import MetricRow, ReplayRow, Report, summarise
from moesim.validate.compare import phase_of
from moesim.validate.report import headline, phase_summary


def _row(scenario: str, metric: str, error: float, spread: float = 0.05) -> MetricRow:
    """A timing row measured at 1.0 whose prediction is off by ``error``."""
    predicted = math.inf if math.isinf(error) else 1.0 + error
    measured = 0.0 if math.isinf(error) else 1.0
    return MetricRow(scenario, metric, "timing", predicted, measured, spread, error)


# p50 latency: -10 %, +30 %, -20 %; expert: -50 %, -100 %, -30 %; all-to-all predicted where
# nothing was measured in one scenario, nothing predicted (-100 %) in two
ROWS = [
    _row("a", "latency_p50_s", -0.1, spread=0.02),
    _row("b", "latency_p50_s", 0.3, spread=0.04),
    _row("c", "latency_p50_s", -0.2, spread=0.10),
    _row("a", "expert_s_per_step", -0.5),
    _row("b", "expert_s_per_step", -1.0),
    _row("c", "expert_s_per_step", -0.3),
    _row("a", "alltoall_s_per_step", -1.0),
    _row("b", "alltoall_s_per_step", math.inf),
    _row("c", "alltoall_s_per_step", -1.0),
    _row("c", "ttft_p99_s", math.nan),  # a percentile with no requests behind it: left out
    MetricRow("a", "tokens_processed", "exact", 5.0, 5.0, 0.0, 0.0),
    MetricRow("b", "tokens_processed", "exact", 5.0, 6.0, 0.0, -1 / 6),
]


def test_summarise_gives_signed_and_absolute_errors_over_scenarios():
    stats = summarise(ROWS)
    assert list(stats) == ["latency_p50_s", "expert_s_per_step", "alltoall_s_per_step"]
    assert stats["latency_p50_s"] == pytest.approx(
        {
            "scenarios": 3,
            "median_abs_error": 0.2,  # of 0.1, 0.3, 0.2
            "max_abs_error": 0.3,
            "median_error": -0.1,  # of -0.2, -0.1, +0.3
            "min_error": -0.2,
            "max_error": 0.3,
            "under_predicted": 2,
            "median_spread": 0.04,
        }
    )
    alltoall = stats["alltoall_s_per_step"]
    assert alltoall["median_error"] == -1.0 and alltoall["median_abs_error"] == 1.0
    assert math.isinf(alltoall["max_error"]) and math.isinf(alltoall["max_abs_error"])
    assert alltoall["under_predicted"] == 2


def test_phases_are_named_by_their_metric_and_summarised_by_phase():
    assert phase_of("expert_s_per_step") == "expert"
    assert phase_of("replay_gate_s_per_step") == "replay_gate"
    assert phase_of("latency_p50_s") is None
    assert ROWS[3].phase == "expert" and ROWS[0].phase is None
    phases = phase_summary(ROWS)
    assert list(phases) == ["expert", "alltoall"]
    assert phases["expert"]["median_error"] == pytest.approx(-0.5)  # of -1.0, -0.5, -0.3
    assert phases["expert"]["median_abs_error"] == pytest.approx(0.5)
    assert phases["expert"]["min_error"] == -1.0
    assert phases["expert"]["max_error"] == pytest.approx(-0.3)
    assert phases["expert"]["under_predicted"] == 3


def test_the_headline_gives_median_abs_and_signed_error_and_the_worst_scenario():
    assert headline(ROWS) == (
        "**p50 step latency** over 3 scenarios: median |error| 20.0%, median signed error "
        "-10.0% (2 of 3 under-predicted), max |error| 30.0% (b)."
    )
    assert headline([r for r in ROWS if r.metric != "latency_p50_s"]) is None


def test_the_markdown_has_the_headline_signed_summary_and_per_phase_table():
    text = Report(rows=ROWS, device="cpu", profile="p", repeats=3, date="d").markdown()
    assert "median signed error -10.0% (2 of 3 under-predicted)" in text
    assert "| latency_p50_s | 3 | 20.0% | -10.0% | 30.0% | 2 | 4.0% |" in text
    assert "| expert | 3 | -50.0% | 50.0% | -100.0% | -30.0% | 3 | 5.0% |" in text
    assert "| alltoall | 3 | -100.0% | 100.0% | -100.0% | +inf (measured 0) | 2 | 5.0% |" in text
    assert "| latency_p50_s | 1.3 | 1 | +30.0% | 4.0% |" in text  # per scenario, signed
    assert "Exact accounting metrics: 1 of 2 match." in text
    assert "- MISMATCH b tokens_processed: predicted 5, measured 6" in text
    assert text.index("## Per phase") < text.index("## Per scenario")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def test_the_csvs_keep_the_old_columns_and_add_abs_error_phase_and_a_summary(tmp_path):
    paths = Report(rows=ROWS, device="cpu", profile="p", repeats=3, date="d").write(tmp_path)
    assert [p.name for p in paths] == ["report.csv", "summary.csv", "report.md", "report.png"]
    rows = _read(tmp_path / "report.csv")
    assert list(rows[0]) == [
        "scenario",
        "metric",
        "kind",
        "predicted",
        "measured",
        "error",
        "spread",
        "abs_error",
        "phase",
    ]
    by_key = {(r["scenario"], r["metric"]): r for r in rows}
    assert float(by_key["a", "latency_p50_s"]["error"]) == pytest.approx(-0.1)
    assert float(by_key["a", "latency_p50_s"]["abs_error"]) == pytest.approx(0.1)
    assert by_key["a", "latency_p50_s"]["phase"] == ""
    assert by_key["b", "expert_s_per_step"]["phase"] == "expert"
    summary = {r["metric"]: r for r in _read(tmp_path / "summary.csv")}
    assert list(summary) == ["latency_p50_s", "expert_s_per_step", "alltoall_s_per_step"]
    expert = summary["expert_s_per_step"]
    assert expert["phase"] == "expert" and expert["scenarios"] == "3"
    assert float(expert["median_error"]) == pytest.approx(-0.5)
    assert float(expert["min_error"]) == -1.0 and expert["under_predicted"] == "3"
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_replay_reports_the_signed_error_of_its_total(tmp_path):
    replay = ReplayRow(
        scenario="s",
        steps=2,
        measured_steps=2,
        token_mismatches=0,
        median_abs_error=0.25,
        median_error=-0.25,
        p90_abs_error=0.3,
        median_spread=0.1,
        predicted_s=1.5,
        measured_s=2.0,
        predicted_N=np.array([0.5, 1.0]),
        measured_N=np.array([0.6, 1.4]),
    )
    assert replay.total_error == pytest.approx(-0.25)  # (1.5 - 2.0) / 2.0
    report = Report(rows=ROWS, device="cpu", profile="p", repeats=3, date="d", replays=[replay])
    assert "| 1.500 s | 2.000 s | -25.0% |" in report.markdown()
    report.write(tmp_path)
    assert float(_read(tmp_path / "replay.csv")[0]["total_error"]) == pytest.approx(-0.25)
