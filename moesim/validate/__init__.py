"""Validation: scenarios simulated and run for real, compared metric by metric, reported."""

from moesim.validate.compare import (
    EXACT_METRICS,
    TOLERABLE,
    MetricRow,
    compare,
    metric_values,
)
from moesim.validate.report import Report, summarise
from moesim.validate.runner import scenario_files, scenario_folders, validate
from moesim.validate.serving import ReplayRow, replay_row, serving_metric_values

__all__ = [
    "EXACT_METRICS",
    "TOLERABLE",
    "MetricRow",
    "ReplayRow",
    "Report",
    "compare",
    "metric_values",
    "replay_row",
    "scenario_files",
    "scenario_folders",
    "serving_metric_values",
    "summarise",
    "validate",
]
