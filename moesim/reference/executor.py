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
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from moesim.config import LINK_KINDS, Scenario
from moesim.errors import MoesimError
from moesim.metrics import PHASES, DeviceRecords, RunRecords, StepRecords, load_imbalance
from moesim.reference.rank import run_rank
from moesim.reference.workplan import UnsupportedScenarioError, Workplan, make_workplan

__all__ = ["DEFAULT_WARMUP_STEPS", "execute"]

DEFAULT_WARMUP_STEPS = 2
_ALLTOALL = PHASES.index("alltoall")

StepCallback = Callable[[int, int], None]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if os.path.exists("/proc/cpuinfo") else []
    ):
        if line.startswith("model name"):
            return f"cpu: {line.split(':', 1)[1].strip()}"
    return f"cpu: {platform.processor() or platform.machine()}"


def _check_device(device: str, world: int) -> None:
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
    steps = work.units_NLTK.shape[0]
    if world == 1:
        try:
            run_rank(0, 1, work, device, tmp, warmup)
        except MoesimError:
            raise
        except Exception:
            raise MoesimError(f"reference executor failed: {_first_error(tmp)}") from None
        return
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    context = mp.start_processes(
        run_rank,
        args=(world, work, device, tmp, warmup),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    progress = Path(tmp) / "progress"
    try:
        while not context.join(timeout=0.2):
            if on_step is not None and progress.exists():
                text = progress.read_text()
                if text:
                    on_step(int(text), steps)
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
    _check_device(device, scenario.cluster.gpus)
    work = make_workplan(scenario, device)
    with tempfile.TemporaryDirectory(prefix="moesim-ref-") as tmp:
        _launch(work, device, tmp, warmup, on_step)
        ranks = [dict(np.load(Path(tmp) / f"rank{r}.npz")) for r in range(work.plan.gpus)]
    if on_step is not None:
        on_step(scenario.workload.steps, scenario.workload.steps)
    return _records(work, ranks, _device_name(device), device, time.perf_counter() - wall_start)


def _memory_capacity(device: str) -> float:
    if device.startswith("cuda"):
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _records(work: Workplan, ranks: list[dict], name: str, device: str, wall: float) -> RunRecords:
    scenario = work.scenario
    model, workload = scenario.model, scenario.workload
    layers = work.units_NLTK.shape[1]
    steps = work.units_NLTK.shape[0]
    # from the first rank's start to the last rank's end (one monotonic clock per machine)
    latency_N = np.max([r["end"] for r in ranks], axis=0) - np.min(
        [r["start"] for r in ranks], axis=0
    )
    phases_RNP = np.stack([r["phases"] for r in ranks])
    breakdown_NP = phases_RNP.max(axis=0)
    breakdown_NP[:, _ALLTOALL] = 0.0
    breakdown_NP[:, _ALLTOALL] = np.maximum(latency_N - breakdown_NP.sum(axis=1), 0.0)
    received_RNL = np.stack([r["received_L"].reshape(steps, layers) for r in ranks])
    processed_N = np.sum([r["processed"] for r in ranks], axis=0).astype(np.int64)
    routed = layers * workload.tokens_per_step * model.top_k
    cache_RNC = np.stack([r["cache"].reshape(steps, 4) for r in ranks]).astype(np.int64)
    cache_NC = cache_RNC.sum(axis=0)
    received_NLR = received_RNL.transpose(1, 2, 0)
    steps_records = StepRecords(
        start_s=np.concatenate([[0.0], np.cumsum(latency_N)[:-1]]),
        latency_s=latency_N,
        tokens=np.full(steps, workload.tokens_per_step),
        routed=np.full(steps, routed),
        processed=processed_N,
        dropped=routed - processed_N,
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
        host_to_device_bytes=cache_NC[:, 3] * float(model.expert_params * model.dtype_bytes),
    )
    weights_G = np.array([float(r["weights"]) for r in ranks])
    kv_G = np.array([float(r["kv"]) for r in ranks])
    peaks = np.array([float(r["allocator_peak"]) for r in ranks])
    counted_G = np.array([r["activation"].max(initial=0.0) for r in ranks])
    activation_G = np.where(np.isnan(peaks), counted_G, np.maximum(peaks - weights_G - kv_G, 0))
    slots = work.plan.experts_per_gpu_LG
    if work.buffered:
        slots = np.minimum(slots, scenario.policies.cache.slots_per_layer)
    devices = DeviceRecords(
        capacity_bytes=_memory_capacity(device),
        weights_bytes=weights_G,
        kv_cache_bytes=kv_G,
        activation_peak_bytes=activation_G,
        expert_tokens_LG=received_RNL.sum(axis=1).T.astype(np.float64),
        expert_weights_bytes=slots.sum(axis=0) * float(model.expert_params * model.dtype_bytes),
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
