"""A hardware profile from micro-benchmarks on the local device.

The profile is a plain dict in the schema of ``moesim.config.HardwareProfile`` (ready for YAML)
with every figure's provenance ``source: calibrated``. Measured times keep 4 significant digits;
fitted figures are computed from those rounded times.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from moesim.calibrate import collectives, copies
from moesim.calibrate.device import (
    CPU_THREADS,
    cpu_model_name,
    device_name,
    host_memory_bytes,
    resolve_device,
    running_on,
    torch_dtype,
)
from moesim.calibrate.fit import fit_latency_bandwidth, peak_flops
from moesim.calibrate.measure import Measurements, measure_all, significant
from moesim.calibrate.model import measure_model, model_steps
from moesim.calibrate.model_stack import ModelStack, build_stack
from moesim.config import ModelSpec
from moesim.config.model_tables import ModelShapes
from moesim.errors import MoesimError

__all__ = ["calibrate_profile"]

Grid = Literal["full", "quick"]
Progress = Callable[[str, int, int], None]
_DEFAULT_DTYPE = {"cpu": "fp32", "cuda": "fp16"}
_QUICK_SCRATCH_BYTES = 2**20  # a quick calibration (tests) streams little between passes


def _command(
    device: str,
    grid: Grid,
    world_sizes: Sequence[int] | None,
    dtype: str | None,
    name: str | None,
    models: Sequence[ModelSpec] = (),
) -> str:
    """The ``moesim calibrate`` command line that asks for this calibration."""
    parts = ["moesim calibrate", f"--device {device}"]
    parts += [f"--model {model.name}" for model in models]
    if grid != "full":
        parts.append(f"--grid {grid}")
    if world_sizes is not None:
        parts.append(f"--world-sizes {','.join(str(w) for w in world_sizes)}")
    if dtype is not None:
        parts.append(f"--dtype {dtype}")
    if name is not None:
        parts.append(f"--name {name}")
    return " ".join(parts)


def _software(device: torch.device) -> dict[str, str]:
    try:
        moesim_version = importlib.metadata.version("moesim")
    except importlib.metadata.PackageNotFoundError:
        moesim_version = "dev"
    versions = {
        "moesim": moesim_version,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }
    if device.type == "cuda" and torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    return versions


def _profile_name(device: torch.device, label: str) -> str:
    if device.type == "cpu":
        return "local-cpu"
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "local-gpu"


def _size(value: float) -> str:
    """Bytes as a short binary size for people: ``4KiB``, ``64MiB``."""
    unit = "B"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:g}{unit}"


def calibrate_profile(
    device: str = "cpu",
    *,
    grid: Grid = "full",
    world_sizes: Sequence[int] | None = None,
    dtype: str | None = None,
    name: str | None = None,
    models: Sequence[ModelSpec] = (),
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the local ``device`` (``cpu`` or ``cuda[:N]``) and return a hardware profile dict.

    ``grid="quick"`` measures small grids (seconds, for tests). ``world_sizes`` are the ranks of
    the all-to-all curves (default: 2 up to the GPUs, or the cores capped at 8; none below 2).
    ``dtype`` is the GEMM's (default fp32 on a CPU, fp16 on a GPU). ``models``: cards whose
    operators are also measured as the reference executor runs them (``compute.models``,
    ``calibrate.model``). ``on_progress(stage, done, total)`` is called as each measurement of
    the stages ``gemm``, ``copies``, ``alltoall`` and ``model <name>`` ends. Bad input raises
    MoesimError before anything is measured.
    """
    if grid not in ("full", "quick"):
        raise MoesimError(f"unknown grid {grid!r}: expected 'full' or 'quick'")
    target = resolve_device(device)
    dtype_name = dtype or _DEFAULT_DTYPE[target.type]
    torch_dtype(dtype_name)  # an unknown dtype fails here, before any measurement
    ranks = (
        collectives.default_world_sizes(target)
        if world_sizes is None
        else collectives.check_world_sizes(world_sizes, target)
    )
    report = on_progress or (lambda stage, done, total: None)
    memory = host_memory_bytes() if target.type == "cpu" else _gpu_memory(target)
    scratch = None if grid == "full" else _QUICK_SCRATCH_BYTES
    stacks = [build_stack(model, target, memory, scratch) for model in _distinct(models)]
    measured = measure_all(target, dtype_name, grid, ranks, report)
    command = _command(device, grid, world_sizes, dtype, name, models)
    profile = _assemble(measured, target, command, name, copies.copy_sizes(grid))
    if stacks:
        provenance = profile["compute"]["provenance"]
        profile["compute"]["models"] = [
            _model_tables(stack, target, grid, report, provenance) for stack in stacks
        ]
    return profile


def _gpu_memory(device: torch.device) -> float:
    return float(torch.cuda.get_device_properties(device).total_memory)


def _distinct(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    """The cards, each (name and shapes) once, in order."""
    seen: list[tuple[str, ModelShapes]] = []
    kept = []
    for model in models:
        key = (model.name, ModelShapes.of(model))
        if key not in seen:
            seen.append(key)
            kept.append(model)
    return kept


def _model_tables(
    stack: ModelStack,
    device: torch.device,
    grid: Grid,
    report: Progress,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """One card's ModelTables dict, with its provenance."""
    stage = f"model {stack.model.name}"
    total = model_steps(grid, stack.dense is not None)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        report(stage, done, total)

    with running_on(device):
        tables = measure_model(stack, grid, tick)
    command = str(provenance["ref"]).split("; ", 1)[0]
    shapes = ModelShapes.of(stack.model)
    return {
        **tables,
        "provenance": {
            **provenance,
            "ref": (
                f"{command}; the operators of model card {stack.model.name!r} (d_model "
                f"{shapes.d_model}, d_ffn {shapes.d_ffn}, {shapes.num_experts} experts, top-"
                f"{shapes.top_k}, {shapes.dtype}) timed with the reference executor's code and "
                "phase timer on one rank"
            ),
        },
    }


def _assemble(
    measured: Measurements,
    device: torch.device,
    command: str,
    name: str | None,
    copy_sizes: list[int],
) -> dict[str, Any]:
    """The profile dict: measured tables and curves, fitted figures, provenance."""
    label = device_name(device)
    today = datetime.date.today().isoformat()
    software = _software(device)

    def provenance(what: str) -> dict[str, Any]:
        return {
            "source": "calibrated",
            "ref": f"{command}; {what}",
            "date": today,
            "measured_on": label,
            "software": dict(software),
        }

    on_cpu = device.type == "cpu"
    table, transfer = measured.gemm, measured.host_transfer
    host_latency, host_bandwidth = fit_latency_bandwidth(transfer["bytes"], transfer["seconds"])
    host_memory = host_memory_bytes()
    capacity = host_memory if on_cpu else torch.cuda.get_device_properties(device).total_memory
    m, k, n = table["m"], table["k"], table["n"]
    threads = f", {CPU_THREADS} thread per process" if on_cpu else ""
    host_link = "between two CPU tensors" if on_cpu else f"from pinned host memory to {device}"
    profile: dict[str, Any] = {
        "name": name or _profile_name(device, label),
        "description": f"{label}{threads}; calibrated by moesim",
        "compute": {
            "peak_flops": {table["dtype"]: significant(peak_flops(table))},
            "efficiency": 1.0,
            "launch_overhead": significant(measured.launch_overhead_s),
            "gemm": table,
            "attention": measured.attention,
            "provenance": provenance(
                f"{table['dtype']} matmuls m {m[0]}..{m[-1]}, k {k[0]}..{k[-1]}, "
                f"n {n[0]}..{n[-1]} with weights read from memory; peak is the best rate among "
                "them; launch overhead: the median small glue op of an MoE layer; attention "
                "cores: scaled-dot-product attention, decode by K/V bytes, causal prefill by FLOPs"
            ),
        },
        "memory": {
            "capacity": capacity,
            "bandwidth": significant(measured.memory_bytes_per_s),
            "efficiency": 1.0,
            "provenance": provenance(
                f"copy of {_size(copy_sizes[-1])} within the device memory (read + write)"
            ),
        },
        "links": {
            "host": {
                "bandwidth": significant(host_bandwidth),
                "latency": significant(host_latency),
                "efficiency": 1.0,
                "pinned": not on_cpu,
                "overlaps_compute": not on_cpu,
                "transfer": transfer,
                "provenance": provenance(
                    f"copies of {_size(copy_sizes[0])}..{_size(copy_sizes[-1])} {host_link}; "
                    "latency and bandwidth fitted"
                ),
            },
        },
        "host": {
            "cpu": cpu_model_name(),
            "memory": host_memory,
            "provenance": provenance("CPU model name and total physical memory"),
        },
    }
    if measured.alltoall:
        profile["links"]["nvlink"] = _alltoall_link(measured.alltoall, on_cpu, provenance)
    return profile


def _alltoall_link(
    alltoall: dict[int, dict[str, Any]], on_cpu: bool, provenance: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """The GPU-GPU link from the all-to-all curves, latency and bandwidth fitted on the
    largest world size."""
    largest = max(alltoall)
    latency, bandwidth = fit_latency_bandwidth(
        alltoall[largest]["bytes"], alltoall[largest]["seconds"]
    )
    between = (
        "gloo between processes on one machine (one thread each), standing in for GPU-GPU links"
        if on_cpu
        else "NCCL between GPUs of this machine"
    )
    return {
        "bandwidth": significant(bandwidth),
        "latency": significant(latency),
        "efficiency": 1.0,
        "alltoall": alltoall,
        "provenance": provenance(
            f"all-to-all with {', '.join(map(str, alltoall))} ranks, {between}; latency and "
            f"bandwidth fitted on {largest} ranks by bytes each rank sends"
        ),
    }
