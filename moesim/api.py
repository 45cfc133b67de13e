"""The public API the CLI and sweeps call: load a scenario, run it, write its outputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moesim.config import Scenario, load_scenario
from moesim.errors import MoesimError
from moesim.files import json_text, publish
from moesim.metrics import Result, RunRecords, chrome_trace
from moesim.policies import PlacementPlan, plan_placement, save_eplb
from moesim.sim import OutOfMemoryError, simulate
from moesim.sim.engine import StepCallback
from moesim.sim.layout import Layout
from moesim.sim.serving import simulate_serving
from moesim.sim.serving_groups import kv_cache
from moesim.workload import read_trace, request_table

__all__ = [
    "OutOfMemoryError",
    "check_out_dir",
    "check_trace_files",
    "load_scenario",
    "request_table",
    "run",
    "serving_kv_blocks",
    "write_outputs",
]


def check_trace_files(scenario: Scenario) -> None:
    """Read the structure of the trace a scenario replays or fits (not yet its ids), so that
    a sweep refuses a bad file before it runs anything; a bad one is a ConfigError."""
    routing = scenario.workload.routing
    for path in (getattr(routing, "path", None), getattr(routing, "fit", None)):
        if path is not None:
            read_trace(path)


def serving_kv_blocks(scenario: Scenario) -> np.ndarray:
    """The KV blocks of each attention group (GPU) of a serving scenario, as the simulator
    sizes them from the profile: the reference executor serves with the same cache."""
    ranks = Layout.of(scenario).view(scenario)
    return kv_cache(scenario, plan_placement(ranks), request_table(scenario)).blocks_A


def run(
    scenario: Scenario,
    *,
    executor: Literal["sim", "reference"] = "sim",
    device: str = "cpu",
    trace_steps: int = 0,
    on_step: StepCallback | None = None,
) -> tuple[Result, RunRecords]:
    """Simulate ``scenario`` (or, with ``executor="reference"``, run it for real with torch on
    ``device``: a serving scenario's requests arrive in real time); returns the ``Result`` and
    the records it was computed from."""
    serving = scenario.workload.phase == "serving"
    if executor == "reference":
        try:
            from moesim.reference import execute, serve
        except ImportError:
            raise MoesimError(
                "the reference executor needs torch: pip install 'moesim[torch]'"
            ) from None
        if serving:
            records = serve(
                scenario, serving_kv_blocks(scenario), device=device, on_progress=on_step
            )
        else:
            records = execute(scenario, device=device, on_step=on_step)
    elif serving:
        records = simulate_serving(scenario, trace_steps=trace_steps, on_progress=on_step)
    else:
        records = simulate(scenario, trace_steps=trace_steps, on_step=on_step)
    return Result.from_records(records), records


def _write_json(path: Path, document: Any) -> None:
    """Write atomically: a crash never leaves a half-written file in place of a good one."""
    text = json_text(document, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise MoesimError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text + "\n")
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_parquet(path: Path, columns: dict[str, Any]) -> None:
    """Write a column table atomically, like ``_write_json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        pq.write_table(pa.table(columns), temporary)
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_out_dir(out_dir: str | Path) -> Path:
    """The output folder, refused up front if a file stands in its place."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MoesimError(f"--out {out}: exists and is not a folder")
    return out


def write_outputs(
    out_dir: str | Path, scenario: Scenario, result: Result, records: RunRecords | None = None
) -> list[Path]:
    """Write ``result.json`` (with the resolved scenario), ``trace.json`` given spans, and the
    placement in EPLB form, ``placement.npz``, when every GPU holds as many experts."""
    out = check_out_dir(out_dir)
    document = result.model_dump(mode="json")
    document["config"] = scenario.model_dump(mode="json")
    written = [out / "result.json"]
    _write_json(written[0], document)
    if records is not None and records.spans.device.size:
        written.append(out / "trace.json")
        spans, serving = records.spans, records.serving
        until = float((spans.start_s + spans.duration_s).max())
        requests = serving.requests if serving is not None else None
        _write_json(written[-1], chrome_trace(spans, scenario.name, requests, until))
    else:
        (out / "trace.json").unlink(missing_ok=True)  # an older run's timeline is not this one
    if records is not None and records.serving is not None:
        written.append(out / "requests.parquet")
        _write_parquet(written[-1], records.serving.requests.table())
    else:
        (out / "requests.parquet").unlink(missing_ok=True)
    if records is not None and records.phy2log_LU is not None and records.phy2log_LU.size:
        plan = PlacementPlan(
            records.phy2log_LU, records.owner_LU, records.gpus, scenario.model.num_experts
        )
        try:
            save_eplb(out / "placement.npz", plan)
            written.append(out / "placement.npz")
        except ValueError:  # GPUs hold unequal numbers of experts: no EPLB form
            (out / "placement.npz").unlink(missing_ok=True)  # never leave an older run's plan
    return written
