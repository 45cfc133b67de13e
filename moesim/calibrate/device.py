"""The device a calibration measures: parsing its name, describing it, running on it.

On a CPU every benchmark runs on one thread, as each rank of the reference executor does.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from moesim.config import DTYPE_BYTES
from moesim.errors import MoesimError

__all__ = [
    "CPU_THREADS",
    "cpu_model_name",
    "device_name",
    "host_memory_bytes",
    "max_world_size",
    "resolve_device",
    "running_on",
    "torch_dtype",
]

CPU_THREADS = 1  # threads per process on a CPU, as in the reference executor
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a torch device that exists on this machine."""
    match = _DEVICE.match(device.strip()) if isinstance(device, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise MoesimError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MoesimError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
    index = int(match.group(2) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise MoesimError(f"device {device!r} asked for, but this machine has {count} GPU(s)")
    return torch.device("cuda", index)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a moesim dtype name (``fp32``, ``fp16``, ``bf16``)."""
    if name not in _TORCH_DTYPES:
        known = ", ".join(_TORCH_DTYPES)
        extra = " (known to moesim, but not calibrated)" if name in DTYPE_BYTES else ""
        raise MoesimError(f"cannot calibrate dtype {name!r}{extra}: choose one of {known}")
    return _TORCH_DTYPES[name]


CPU_MAX_WORLD = 8  # CPU ranks may share cores (as the reference executor's may)


def usable_cores() -> int:
    """Cores this process may run on (affinity and container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def max_world_size(device: torch.device) -> int:
    """Processes an all-to-all may use: one per GPU on CUDA; on a CPU up to 8, sharing cores
    when there are fewer (the executor runs such scenarios too)."""
    if device.type == "cuda":
        return torch.cuda.device_count()
    return CPU_MAX_WORLD


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """What the device is, for people: the GPU's name or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def host_memory_bytes() -> int:
    """Total physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@contextlib.contextmanager
def running_on(device: torch.device) -> Iterator[None]:
    """Make ``device`` current for timing: a GPU current for events, a CPU one thread wide
    (the thread count before is restored on leaving)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
