"""Chrome trace (Perfetto-loadable JSON) from span records: one process per GPU, one thread
per stream that has work (compute, comm, copy), complete ("X") events in microseconds."""

from __future__ import annotations

from typing import Any

from moesim.metrics.records import SpanRecords

__all__ = ["STREAMS", "chrome_trace"]

STREAMS = ("compute", "comm", "copy")


def chrome_trace(spans: SpanRecords, title: str = "moesim") -> dict[str, Any]:
    """The ``{"traceEvents": [...]}`` document for ``spans``."""
    events: list[dict[str, Any]] = []
    for gpu in sorted({int(d) for d in spans.device}):
        events.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": gpu,
                "tid": 0,
                "args": {"name": f"GPU {gpu}"},
            }
        )
        used = {str(name) for name in spans.stream[spans.device == gpu]}
        for tid, stream in enumerate(STREAMS):
            if stream not in used:
                continue
            events.append(
                {"ph": "M", "name": "thread_name", "pid": gpu, "tid": tid, "args": {"name": stream}}
            )
    for i in range(spans.device.size):
        layer = int(spans.layer[i])
        events.append(
            {
                "ph": "X",
                "name": str(spans.name[i]),
                "cat": str(spans.stream[i]),
                "pid": int(spans.device[i]),
                "tid": STREAMS.index(str(spans.stream[i])),
                "ts": float(spans.start_s[i]) * 1e6,
                "dur": float(spans.duration_s[i]) * 1e6,
                "args": {"step": int(spans.step[i]), "moe_layer": layer if layer >= 0 else None},
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"title": title}}
