"""Chrome trace (Perfetto-loadable JSON) from span records: one process per GPU, one thread
per stream that has work (compute, comm, copy), complete ("X") events in microseconds; for a
serving run, a "requests" process beside them with each request's queue, prefill and decode
as async slices."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.metrics.records import SpanRecords
from moesim.metrics.serving import RequestRecords

__all__ = ["STREAMS", "chrome_trace"]

STREAMS = ("compute", "comm", "copy")
REQUESTS_PID = 1_000_000  # the requests' process, after every GPU's


def chrome_trace(
    spans: SpanRecords,
    title: str = "moesim",
    requests: RequestRecords | None = None,
    until_s: float = np.inf,
) -> dict[str, Any]:
    """The ``{"traceEvents": [...]}`` document for ``spans`` and, for a serving run, the
    ``requests`` that arrived before ``until_s`` (the traced window's end)."""
    events: list[dict[str, Any]] = []
    if requests is not None:
        events.extend(_request_events(requests, until_s))
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


def _request_events(requests: RequestRecords, until_s: float) -> list[dict[str, Any]]:
    """Each request's queue (arrival to first scheduled), prefill (to its first token) and
    decode (to its last) as async begin/end pairs; what had not ended stops at the end."""
    events: list[dict[str, Any]] = [
        {
            "ph": "M",
            "name": "process_name",
            "pid": REQUESTS_PID,
            "tid": 0,
            "args": {"name": "requests"},
        }
    ]
    phases = (
        ("queue", requests.arrival_s, requests.scheduled_s),
        ("prefill", requests.scheduled_s, requests.first_token_s),
        ("decode", requests.first_token_s, requests.finish_s),
    )
    for request in np.flatnonzero(requests.arrival_s < until_s):
        for name, begins, ends in phases:
            begin, end = float(begins[request]), float(ends[request])
            if not np.isfinite(begin) or not np.isfinite(end) or end <= begin:
                continue
            common = {"cat": "request", "name": name, "id": int(request), "pid": REQUESTS_PID}
            args = {
                "prompt_tokens": int(requests.prompt_tokens[request]),
                "output_tokens": int(requests.output_tokens[request]),
            }
            events.append({**common, "ph": "b", "ts": begin * 1e6, "tid": 0, "args": args})
            events.append({**common, "ph": "e", "ts": end * 1e6, "tid": 0})
    return events
