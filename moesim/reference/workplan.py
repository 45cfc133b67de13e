"""What the ranks of a reference run execute, decided by the same policy code as the simulator.

The parent process draws the routing, plans the placement and gates every measured step
exactly as ``sim`` does; ranks receive these arrays and do the work for real. Routing is in
placement slots (units); under static gating ``kept_NLTK`` says which assignments get a slot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from moesim.config import GATING, ParallelSpec, Scenario
from moesim.errors import MoesimError
from moesim.policies import (
    PlacementPlan,
    buffered_stacks,
    plan_placement,
    request_sequences,
    warmup_steps,
)
from moesim.workload import routing_chunks, tokens_per_gpu

__all__ = [
    "UnsupportedScenarioError",
    "Workplan",
    "check_layout",
    "check_model",
    "make_workplan",
    "resident_bytes",
]

_MEMORY_SHARE = 0.5  # of the machine's RAM (or the GPU's memory) the executor may fill
_HOST = "half of this machine's memory"


class UnsupportedScenarioError(MoesimError):
    """The reference executor cannot run this scenario on this machine."""


@dataclass(frozen=True)
class Workplan:
    """A reference run: the scenario, its placement, each GPU's tokens and the measured
    steps' routing in units, with static gating's capacity and keep mask."""

    scenario: Scenario
    plan: PlacementPlan
    tokens_G: np.ndarray
    units_NLTK: np.ndarray
    logical_NLTK: np.ndarray
    kept_NLTK: np.ndarray | None
    capacity_G: np.ndarray | None
    einsum_dispatch: bool
    buffered: bool
    future: dict | None

    @property
    def offsets_G(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.tokens_G)])


def resident_bytes(scenario: Scenario, plan: PlacementPlan) -> tuple[np.ndarray, float]:
    """Bytes each rank allocates on its device (weights, KV cache; for buffered layers only
    the slots), and the host bytes of all ranks' buffered experts."""
    model, workload = scenario.model, scenario.workload
    blocks = model.stacks()[scenario.stack()]
    moe = model.moe_layers(scenario.stack())
    d = model.d_model
    per_rank = (
        blocks * (model.attention_params_per_block + 2 * d)
        + (blocks - moe) * model.dense_ffn_params
        + moe * (d * model.num_experts + model.shared_experts * model.expert_params)
        + model.vocab_size * d
    )
    experts_LG = plan.experts_per_gpu_LG
    host = 0.0
    if scenario.stack() in buffered_stacks(scenario):
        host = float(experts_LG.sum()) * model.expert_params * model.dtype_bytes
        experts_LG = np.minimum(experts_LG, scenario.policies.cache.slots_per_layer)
    tokens_G = tokens_per_gpu(workload.tokens_per_step, plan.gpus)
    cached = workload.seq_len if workload.phase == "decode" else 1  # positions per token
    kv_G = blocks * tokens_G * cached * model.kv_width
    device_G = per_rank + experts_LG.sum(axis=0) * model.expert_params + kv_G
    return device_G * float(model.dtype_bytes), host


def _memory_check(scenario: Scenario, plan: PlacementPlan, device: str) -> None:
    """Each rank's device bytes against its GPU and the host copies against the host (on a CPU,
    all of it against the machine)."""
    device_G, host = resident_bytes(scenario, plan)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * _MEMORY_SHARE
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_properties(device).total_memory * _MEMORY_SHARE
        checks = [(float(device_G.max()), gpu, "half of a GPU's memory"), (host, ram, _HOST)]
    else:
        checks = [(float(device_G.sum()) + host, ram, _HOST)]
    for need, have, where in checks:
        if need > have:
            raise UnsupportedScenarioError(
                f"{scenario.name}: the reference executor would allocate {need / 2**30:.2f} "
                f"GiB, more than {where} "
                f"({have / 2**30:.2f} GiB); shrink "
                "the model or the batch"
            )


def check_model(scenario: Scenario) -> None:
    """Refuse in one line a model the executor does not build."""
    model = scenario.model
    if model.architecture != "decoder":
        raise UnsupportedScenarioError(
            f"{scenario.name}: model.architecture: the reference executor runs decoder models, "
            f"not {model.architecture}"
        )
    if model.attention_params is not None or model.kv_dim is not None or model.mla is not None:
        raise UnsupportedScenarioError(
            f"{scenario.name}: model: the reference executor builds standard multi-head "
            "attention; attention_params/kv_dim overrides and MLA are not supported"
        )
    parts = ("attention", "kv_cache", "dispatch", "combine")
    if any(model.part_dtype(part) != model.dtype for part in parts):
        raise UnsupportedScenarioError(
            f"{scenario.name}: model: the reference executor runs one dtype; per-part "
            "precisions (attention_dtype, kv_cache_dtype, dispatch_dtype, combine_dtype) "
            "are not supported"
        )
    check_layout(scenario)


def check_layout(scenario: Scenario) -> None:
    """Refuse in one line a layout or policy the executor does not run: it runs data-parallel
    attention, expert parallelism, one batch per step, each expert's FFN as its own kernels
    and direct all-to-alls."""
    cluster, policies, workload = scenario.cluster, scenario.policies, scenario.workload
    refused = {
        "cluster.parallel": cluster.parallel != ParallelSpec(),
        "cluster.pools": cluster.pools is not None,
        "policies.router": policies.router != "round_robin",
        "policies.overlap": policies.overlap.name != "none",
        "policies.alltoall": policies.alltoall != "direct",
        "policies.expert_kernel": policies.expert_kernel != "loop",
        "workload.mtp": workload.mtp is not None,
    }
    for field, differs in refused.items():
        if differs:
            raise UnsupportedScenarioError(
                f"{scenario.name}: {field}: the reference executor runs data-parallel "
                "attention with expert parallelism on one colocated pool, round-robin routing, "
                "one batch per step, loop expert kernels and direct all-to-alls; simulate "
                "this one (--executor sim)"
            )


def _check(scenario: Scenario, plan: PlacementPlan, device: str) -> None:
    check_model(scenario)
    workload = scenario.workload
    if scenario.policies.cache.prefetch != "none":
        raise UnsupportedScenarioError(
            f"{scenario.name}: policies.cache.prefetch: the reference executor copies on "
            "demand only (prefetch: none)"
        )
    if workload.phase == "prefill":
        tokens_G = tokens_per_gpu(workload.tokens_per_step, plan.gpus)
        if np.any(tokens_G % workload.seq_len):
            raise UnsupportedScenarioError(
                f"{scenario.name}: workload.batch_size: prefill needs whole sequences per rank "
                f"({workload.batch_size} sequences over {plan.gpus} ranks)"
            )
    _memory_check(scenario, plan, device)


def make_workplan(scenario: Scenario, device: str = "cpu") -> Workplan:
    """Route, place and gate the scenario's measured steps; refuse what cannot run here."""
    plan = plan_placement(scenario)
    _check(scenario, plan, device)
    gpus = scenario.cluster.gpus
    tokens_G = tokens_per_gpu(scenario.workload.tokens_per_step, gpus)
    source_T = np.repeat(np.arange(gpus), tokens_G)
    gating = GATING.build(scenario.policies.gating)
    logical, units, kept, needed = [], [], [], []
    outcome = None
    for chunk in routing_chunks(scenario, warmup_steps(scenario), resolution="tokens"):
        ids = plan.to_units(chunk.expert_ids_NLTK)
        outcome = gating.gate(ids, source_T, gpus, plan.units)
        logical.append(chunk.expert_ids_NLTK)
        units.append(ids)
        needed.append(outcome.tokens_NLE > 0)
        if outcome.capacity_G is not None:
            kept.append(gating.kept(ids, source_T, gpus, plan.units))
    cache = scenario.policies.cache
    buffered = scenario.stack() in buffered_stacks(scenario)
    future = None
    if buffered and cache.name == "belady" and needed:
        future = request_sequences(np.concatenate(needed), plan)
    return Workplan(
        scenario=scenario,
        plan=plan,
        tokens_G=tokens_G,
        units_NLTK=np.concatenate(units),
        logical_NLTK=np.concatenate(logical),
        kept_NLTK=np.concatenate(kept) if kept else None,
        capacity_G=None if outcome is None else outcome.capacity_G,
        einsum_dispatch=bool(outcome is not None and outcome.einsum_dispatch),
        buffered=buffered,
        future=future,
    )
