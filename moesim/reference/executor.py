"""Launch a reference run and fold what its ranks measured into ``RunRecords``.

One process per simulated GPU (``torch.multiprocessing`` + ``torch.distributed``: gloo on CPU,
NCCL on CUDA, rendezvous through a file); a one-rank run stays in this process. A step lasts
from the first rank's start to the last rank's end (the barrier that ends it is not counted:
the simulator has none). Its breakdown takes each compute phase
from the rank that spent longest in it and leaves the rest of the step (the collectives and the
waiting in them) to ``alltoall``, so a row sums to the latency as the simulator's does.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from moesim.config import LINK_KINDS, Scenario
from moesim.errors import MoesimError
from moesim.metrics import PHASES, DeviceRecords, RunRecords, StepRecords, load_imbalance
from moesim.reference.rank import run_rank
from moesim.reference.workplan import UnsupportedScenarioError, Workplan, make_workplan

__all__ = [
    "DEFAULT_WARMUP_STEPS",
    "check_device",
    "device_name",
    "device_records",
    "execute",
    "in_process",
    "memory_capacity",
    "spawn_ranks",
    "step_records",
]

DEFAULT_WARMUP_STEPS = 2
_ALLTOALL = PHASES.index("alltoall")

StepCallback = Callable[[int, int], None]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if os.path.exists("/proc/cpuinfo") else []
    ):
        if line.startswith("model name"):
            return f"cpu: {line.split(':', 1)[1].strip()}"
    return f"cpu: {platform.processor() or platform.machine()}"


def check_device(device: str, world: int) -> None:
    if device == "cpu":
        return
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise UnsupportedScenarioError(
            f"--device {device}: expected 'cpu' or an available 'cuda[:N]' device"
        )
    if world > torch.cuda.device_count():
        raise UnsupportedScenarioError(
            f"cluster: {world} ranks need {world} GPUs for NCCL, this machine has "
            f"{torch.cuda.device_count()}"
        )


def _first_error(tmp: str) -> str | None:
    """The message of the rank that failed first, if any wrote one."""
    stamped = []
    for path in Path(tmp).glob("error*"):
        when, _, message = path.read_text().partition("\n")
        stamped.append((float(when), message))
    return min(stamped)[1] if stamped else None


def _launch(work: Workplan, device: str, tmp: str, warmup: int, on_step: StepCallback | None):
    world = work.plan.gpus
    if world == 1:
        in_process(run_rank, (0, 1, work, device, tmp, warmup), tmp)
        return
    steps = work.units_NLTK.shape[0]
    spawn_ranks(run_rank, (world, work, device, tmp, warmup), world, tmp, on_step, steps)


def in_process(target: Callable, args: tuple, tmp: str) -> None:
    """Run a one-rank ``target(*args)`` here; a failure that is no moesim error becomes one
    line naming its first cause."""
    try:
        target(*args)
    except MoesimError:
        raise
    except Exception:
        raise MoesimError(f"reference executor failed: {_first_error(tmp)}") from None


def spawn_ranks(
    target: Callable,
    args: tuple,
    world: int,
    tmp: str,
    on_progress: StepCallback | None,
    total: int,
) -> None:
    """``target(rank, *args)`` in ``world`` spawned processes; while they run, the count rank 0
    writes to ``tmp/progress`` goes to ``on_progress(count, total)``. A failed rank is one line
    naming the first rank's cause."""
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    context = mp.start_processes(target, args=args, nprocs=world, join=False, start_method="spawn")
    progress = Path(tmp) / "progress"
    try:
        while not context.join(timeout=0.2):
            if on_progress is not None and progress.exists():
                text = progress.read_text()
                if text:
                    on_progress(int(text), total)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
        cause = _first_error(tmp) or str(error).strip().splitlines()[-1]
        raise MoesimError(f"reference executor: a rank failed: {cause}") from None


def execute(
    scenario: Scenario,
    *,
    device: str = "cpu",
    warmup: int = DEFAULT_WARMUP_STEPS,
    on_step: StepCallback | None = None,
) -> RunRecords:
    """Run ``scenario`` for real on ``device`` and return what was measured."""
    wall_start = time.perf_counter()
    check_device(device, scenario.cluster.gpus)
    work = make_workplan(scenario, device)
    with tempfile.TemporaryDirectory(prefix="moesim-ref-") as tmp:
        _launch(work, device, tmp, warmup, on_step)
        ranks = [dict(np.load(Path(tmp) / f"rank{r}.npz")) for r in range(work.plan.gpus)]
    if on_step is not None:
        on_step(scenario.workload.steps, scenario.workload.steps)
    return _records(work, ranks, device_name(device), device, time.perf_counter() - wall_start)


def memory_capacity(device: str) -> float:
    if device.startswith("cuda"):
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def step_records(
    ranks: list[dict], tokens_N: np.ndarray, layers: int, top_k: int, expert_bytes: float
) -> StepRecords:
    """The steps the ranks measured (their columns as ``np.load`` gives them back), each of
    ``tokens_N`` tokens; ``start_s`` counts from the first rank's first start."""
    steps = tokens_N.size
    # from the first rank's start to the last rank's end (one monotonic clock per machine)
    start_N = np.min([r["start"] for r in ranks], axis=0)
    latency_N = np.max([r["end"] for r in ranks], axis=0) - start_N
    phases_RNP = np.stack([r["phases"].reshape(steps, len(PHASES)) for r in ranks])
    breakdown_NP = phases_RNP.max(axis=0)
    breakdown_NP[:, _ALLTOALL] = 0.0
    breakdown_NP[:, _ALLTOALL] = np.maximum(latency_N - breakdown_NP.sum(axis=1), 0.0)
    received_RNL = np.stack([r["received_L"].reshape(steps, layers) for r in ranks])
    processed_N = np.sum([r["processed"] for r in ranks], axis=0).astype(np.int64)
    routed_N = layers * tokens_N * top_k
    cache_NC = np.sum([r["cache"].reshape(steps, 4) for r in ranks], axis=0).astype(np.int64)
    received_NLR = received_RNL.transpose(1, 2, 0)
    return StepRecords(
        start_s=start_N - (start_N[0] if steps else 0.0),
        latency_s=latency_N,
        tokens=tokens_N,
        routed=routed_N,
        processed=processed_N,
        dropped=routed_N - processed_N,
        padded=np.sum([r["padded"] for r in ranks], axis=0).astype(np.int64),
        alltoall_bytes_NK=np.sum(
            [r["sent_K"].reshape(steps, len(LINK_KINDS)) for r in ranks], axis=0
        ),
        load_imbalance=load_imbalance(received_NLR),
        breakdown_NP=breakdown_NP,
        busiest_tokens_NL=received_NLR.max(axis=-1, initial=0),
        expert_tokens_NL=received_NLR.sum(axis=-1),
        cache_hits=cache_NC[:, 0],
        cache_misses=cache_NC[:, 1],
        cache_evictions=cache_NC[:, 2],
        host_to_device_bytes=cache_NC[:, 3] * expert_bytes,
    )


def device_records(
    ranks: list[dict],
    steps: int,
    layers: int,
    slots_LG: np.ndarray,
    expert_bytes: float,
    device: str,
) -> DeviceRecords:
    """Per rank: its weights and KV bytes, its activation peak (the allocator's on CUDA, the
    counted one on CPU), the expert tokens it received per layer and its expert slots' bytes."""
    weights_G = np.array([float(r["weights"]) for r in ranks])
    kv_G = np.array([float(r["kv"]) for r in ranks])
    peaks = np.array([float(r["allocator_peak"]) for r in ranks])
    counted_G = np.array([r["activation"].max(initial=0.0) for r in ranks])
    activation_G = np.where(np.isnan(peaks), counted_G, np.maximum(peaks - weights_G - kv_G, 0))
    received_RNL = np.stack([r["received_L"].reshape(steps, layers) for r in ranks])
    return DeviceRecords(
        capacity_bytes=memory_capacity(device),
        weights_bytes=weights_G,
        kv_cache_bytes=kv_G,
        activation_peak_bytes=activation_G,
        expert_tokens_LG=received_RNL.sum(axis=1).T.astype(np.float64),
        expert_weights_bytes=slots_LG.sum(axis=0) * expert_bytes,
    )


def _records(work: Workplan, ranks: list[dict], name: str, device: str, wall: float) -> RunRecords:
    scenario = work.scenario
    model, workload = scenario.model, scenario.workload
    layers = work.units_NLTK.shape[1]
    steps = work.units_NLTK.shape[0]
    records = step_records(
        ranks,
        np.full(steps, workload.tokens_per_step),
        layers,
        model.top_k,
        float(model.expert_params * model.dtype_bytes),
    )
    # back to back, as the simulator lays them out (the barriers between are not counted)
    latency_N = records.latency_s
    steps_records = replace(records, start_s=np.concatenate([[0.0], np.cumsum(latency_N)[:-1]]))
    slots_LG = work.plan.experts_per_gpu_LG
    if work.buffered:
        slots_LG = np.minimum(slots_LG, scenario.policies.cache.slots_per_layer)
    devices = device_records(
        ranks, steps, layers, slots_LG, float(model.expert_params * model.dtype_bytes), device
    )
    cache = scenario.policies.cache
    return RunRecords(
        scenario=scenario.name,
        executor="reference",
        device=name,
        gpus=work.plan.gpus,
        phase=workload.phase,
        steps=steps_records,
        devices=devices,
        placement=scenario.policies.placement.name,
        cache=None if cache.name == "none" else cache.model_dump(),
        phy2log_LU=work.plan.phy2log_LU,
        owner_LU=work.plan.owner_LU,
        wall_seconds=wall,
        events=steps,
    )
