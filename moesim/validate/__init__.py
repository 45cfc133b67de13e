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

__all__ = [
    "EXACT_METRICS",
    "TOLERABLE",
    "MetricRow",
    "Report",
    "compare",
    "metric_values",
    "scenario_files",
    "scenario_folders",
    "summarise",
    "validate",
]
