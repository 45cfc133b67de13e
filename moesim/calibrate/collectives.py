"""All-to-all time against bytes per rank, measured with one process per rank.

Each timed all-to-all follows a little compute on every rank, as in a model, and lasts from the
last rank's arrival to the last rank's exit: the transfer, without the wait for stragglers that
the simulator charges to the straggler's compute.

Processes are started with ``torch.multiprocessing.spawn`` and meet through a file store in a
temporary folder (no TCP port is opened): gloo between CPU processes (one thread each), NCCL
between GPUs (rank r on ``cuda:r``). Rank 0 writes the curve to a JSON file in that folder.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moesim.calibrate.device import CPU_THREADS, max_world_size, usable_cores
from moesim.errors import MoesimError

__all__ = [
    "alltoall_sizes",
    "check_world_sizes",
    "default_world_sizes",
    "measure_alltoall",
]

Grid = Literal["full", "quick"]
_KIB = 1024
_LARGEST = {"full": 16 * _KIB**2, "quick": 256 * _KIB}
_DEFAULT_CPU_MAX = 8
_ELEMENT = torch.float32  # payload elements; only their bytes matter
_BUDGET_S = 0.6  # time spent on the repeats of one size
_REPEATS = (5, 200)  # fewest and most repeats of one size
_BUSY_S = 5e-4  # compute before each timed all-to-all on a CPU


def alltoall_sizes(grid: Grid) -> list[int]:
    """Bytes each rank sends to the others: 1 KiB, then powers of 4 up to 16 MiB (quick:
    256 KiB)."""
    sizes = [_KIB]
    while sizes[-1] * 4 <= _LARGEST[grid]:
        sizes.append(sizes[-1] * 4)
    return sizes


def default_world_sizes(device: torch.device) -> list[int]:
    """2 .. the number of GPUs on CUDA (empty below 2); 2 .. the usable cores on a CPU, at
    least 2 (ranks share a core on a one-core machine) and at most 8."""
    if device.type == "cuda":
        return list(range(2, max_world_size(device) + 1))
    return list(range(2, max(2, min(usable_cores(), _DEFAULT_CPU_MAX)) + 1))


def check_world_sizes(world_sizes: Sequence[int], device: torch.device) -> list[int]:
    """The distinct world sizes, ascending; each must be at least 2 and fit on the machine."""
    most = max_world_size(device)
    limit = f"this machine's {most} GPUs" if device.type == "cuda" else f"{most} CPU processes"
    for size in world_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise MoesimError(f"world size {size!r} is not possible: an all-to-all needs 2 ranks")
        if size > most:
            raise MoesimError(f"world size {size} is larger than {limit}")
    return sorted(set(world_sizes))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy(device: torch.device, seconds: float) -> None:
    """Compute for about ``seconds`` before a collective, as a model's layers do: on a CPU the
    ranks' cores are then busy and the transport's threads must be scheduled in."""
    if device.type != "cpu":
        return
    a, b = torch.ones(64, 256), torch.ones(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ b


def _time_one_size(chunk: int, world_size: int, device: torch.device) -> float:
    """Mean seconds of an all-to-all of ``chunk`` elements per peer after compute, from the
    last rank's arrival to the last rank's exit (one monotonic clock on one machine). The mean,
    not the median: a step sums many collectives, and their rare slow ones add up."""
    send = torch.ones(chunk * world_size, dtype=_ELEMENT, device=device)
    receive = torch.empty_like(send)

    def once() -> tuple[float, float]:
        _busy(device, _BUSY_S)
        _synchronize(device)
        begin = time.perf_counter()
        dist.all_to_all_single(receive, send)
        _synchronize(device)
        return begin, time.perf_counter()

    once()
    begin, end = once()
    probe = torch.tensor([end - begin], dtype=torch.float64, device=device)
    dist.all_reduce(probe, op=dist.ReduceOp.MAX)  # every rank picks the same repeat count
    fewest, most = _REPEATS
    repeats = min(most, max(fewest, math.ceil(_BUDGET_S / max(probe.item(), 1e-9))))
    stamps = torch.tensor([once() for _ in range(repeats)], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(stamps) for _ in range(world_size)]
    dist.all_gather(gathered, stamps)
    latest = torch.stack(gathered).amax(dim=0)  # [repeats, (entry, exit)] of the last rank
    return float(statistics.fmean((latest[:, 1] - latest[:, 0]).tolist()))


def _worker(rank: int, world_size: int, folder: str, device_type: str, sizes: list[int]) -> None:
    """One rank: join the group, time each size, rank 0 writes ``result.json``."""
    if device_type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        torch.set_num_threads(CPU_THREADS)
        backend = "gloo"
    dist.init_process_group(
        backend, init_method=f"file://{folder}/store", rank=rank, world_size=world_size
    )
    try:
        element = torch.tensor([], dtype=_ELEMENT).element_size()
        chunks = sorted({max(1, round(size / (world_size - 1) / element)) for size in sizes})
        seconds = [_time_one_size(chunk, world_size, device) for chunk in chunks]
        if rank == 0:
            sent = [chunk * element * (world_size - 1) for chunk in chunks]
            result = {"bytes": sent, "seconds": seconds}
            Path(folder, "result.json").write_text(json.dumps(result), encoding="utf-8")
    finally:
        dist.destroy_process_group()


def measure_alltoall(device: torch.device, world_size: int, sizes: list[int]) -> dict[str, Any]:
    """MeasuredCurve dict ``{bytes, seconds}`` of an all-to-all among ``world_size`` ranks.

    ``bytes`` is what each rank sends to the others, ``sizes`` rounded to whole elements
    split equally among the ``world_size - 1`` peers (each rank also keeps one chunk).
    """
    with tempfile.TemporaryDirectory(prefix="moesim-alltoall-") as folder:
        args = (world_size, folder, device.type, list(sizes))
        try:
            mp.spawn(_worker, args=args, nprocs=world_size, join=True)
        except Exception as error:  # a rank failed: its message, on one line
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else type(error).__name__
            raise MoesimError(f"all-to-all among {world_size} processes failed: {reason}") from None
        return json.loads(Path(folder, "result.json").read_text(encoding="utf-8"))
