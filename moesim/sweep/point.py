"""Running one point of a sweep into one flat row: its status and every scalar metric."""

from __future__ import annotations

import json
from typing import Any

from moesim import api
from moesim.config import load_scenario
from moesim.errors import MoesimError
from moesim.sweep.spec import Point

__all__ = ["error_row", "flatten_result", "label", "run_point"]


def label(value: Any) -> Any:
    """A parameter as a table cell: scalars as they are, a policy mapping as ``name k=v ...``,
    anything else as JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict) and "name" in value:
        rest = " ".join(f"{k}={json.dumps(v)}" for k, v in value.items() if k != "name")
        return f"{value['name']} {rest}".strip()
    return json.dumps(value, sort_keys=True)


def flatten_result(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every scalar of ``result.json`` as ``a.b`` columns; a list of numbers becomes its
    maximum (``..._max``: per-device figures, the busiest device); the per-step table and the
    configuration are left out."""
    row: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if key in ("per_step", "config", "gpu_tokens_by_layer", "imbalance_by_layer"):
            continue
        if isinstance(value, dict):
            row |= flatten_result(value, f"{name}.")
        elif isinstance(value, list):
            numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers:
                row[f"{name}_max"] = float(max(numbers))
        elif value is None or isinstance(value, bool | int | float | str):
            row[name] = value
    return row


def error_row(point_id: str, message: str) -> dict[str, Any]:
    """The row of a point that failed: ``status: error`` and the reason on one line."""
    return {"point_id": point_id, "status": "error", "error": " ".join(message.split())}


def run_point(base: str, point: Point, point_id: str) -> dict[str, Any]:
    """Simulate one point. A configuration that does not fit (weights and KV cache, or the
    peak with activations) is a row with ``status: out_of_memory``; any other failure is a
    row with ``status: error`` and its message, never an exception."""
    row: dict[str, Any] = {"point_id": point_id}
    try:
        result, _ = api.run(load_scenario(base, point.overrides))
    except api.OutOfMemoryError as error:
        return row | {"status": "out_of_memory", "error": str(error)}
    except MoesimError as error:
        return error_row(point_id, str(error))
    except Exception as error:  # a point's failure is its row; the sweep goes on
        return error_row(point_id, f"{type(error).__name__}: {error}")
    metrics = flatten_result(result.model_dump(mode="json"))
    if result.memory.out_of_memory:  # it ran, but its peak does not fit: metrics for reference
        peak = max(result.memory.peak_bytes_per_device) / 2**30
        capacity = result.memory.capacity_bytes / 2**30
        error = f"out of memory: peak {peak:.2f} GiB per GPU, capacity {capacity:.2f} GiB"
        return row | {"status": "out_of_memory", "error": error} | metrics
    return row | {"status": "ok", "error": ""} | metrics
