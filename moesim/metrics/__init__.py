"""Records that sim and reference emit, ``Result`` as a pure function of them, Chrome traces."""

from moesim.metrics.records import (
    PHASES,
    DeviceRecords,
    RunRecords,
    SpanRecords,
    StepRecords,
    load_imbalance,
)
from moesim.metrics.result import Latency, Memory, Result, TokenCounts
from moesim.metrics.trace import chrome_trace

__all__ = [
    "PHASES",
    "DeviceRecords",
    "Latency",
    "Memory",
    "Result",
    "RunRecords",
    "SpanRecords",
    "StepRecords",
    "TokenCounts",
    "chrome_trace",
    "load_imbalance",
]
