"""``Result``: a run's summary, a pure function of its records; one schema for sim and reference.

Token counts are token-expert assignments summed over MoE layers and steps: ``routed`` =
``processed`` + ``dropped``; ``padded`` are empty slots computed under static gating.
Throughput counts the sequence tokens a step advances (prompt tokens in prefill, one new token
per sequence in decode) per simulated second.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict

from moesim.config import LINK_KINDS
from moesim.metrics.records import PHASES, RunRecords
from moesim.metrics.serving import ServingRecords, ServingResult, serving_result

__all__ = ["CacheStats", "Latency", "Memory", "PlacementStats", "Result", "TokenCounts"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Latency(_Out):
    mean: float
    p50: float
    p99: float


class TokenCounts(_Out):
    routed: int
    processed: int
    dropped: int
    padded: int


class Memory(_Out):
    capacity_bytes: float
    peak_bytes_per_device: list[float]
    weights_bytes_per_device: list[float]
    kv_cache_bytes_per_device: list[float]
    activation_peak_bytes_per_device: list[float]
    out_of_memory: bool


class PlacementStats(_Out):
    """Expert-token load per GPU. ``max_load`` / ``avg_max_load`` are the seed paper's metrics:
    the share of a layer's expert tokens in a step that the busiest GPU receives, the worst and
    the mean over steps and layers. ``max_gpu_tokens`` / ``mean_gpu_tokens``: the busiest and
    the average GPU's tokens, averaged over steps and layers. ``gpu_tokens_by_layer``: mean
    tokens per step of each GPU in each MoE layer; ``imbalance_by_layer``: its max / mean."""

    name: str
    max_load: float | None
    avg_max_load: float | None
    max_gpu_tokens: float
    mean_gpu_tokens: float
    imbalance_by_layer: list[float | None]
    gpu_tokens_by_layer: list[list[float]]


def _placement(records: RunRecords) -> PlacementStats:
    steps = records.steps
    busiest, total = steps.busiest_tokens_NL, steps.expert_tokens_NL
    share = busiest[total > 0] / total[total > 0]
    per_step_LG = records.devices.expert_tokens_LG / max(steps.latency_s.size, 1)
    mean_L = per_step_LG.mean(axis=1) if per_step_LG.size else np.zeros(0)
    imbalance = [
        float(m) if mean > 0 else None
        for m, mean in zip(
            per_step_LG.max(axis=1, initial=0) / np.where(mean_L > 0, mean_L, 1),
            mean_L,
            strict=True,
        )
    ]
    gpus = max(records.gpus, 1)
    return PlacementStats(
        name=records.placement,
        max_load=float(share.max()) if share.size else None,
        avg_max_load=float(share.mean()) if share.size else None,
        max_gpu_tokens=float(busiest.mean()) if busiest.size else 0.0,
        mean_gpu_tokens=float(total.mean() / gpus) if total.size else 0.0,
        imbalance_by_layer=imbalance,
        gpu_tokens_by_layer=per_step_LG.tolist(),
    )


class CacheStats(_Out):
    """Expert buffering over the run: requests (hits + misses) per (GPU, buffered layer, step),
    bytes copied from host memory, and ``stall_s``, the critical path's wait for copies."""

    name: str
    slots_per_layer: int
    prefetch: str
    step_aware: bool
    hits: int
    misses: int
    hit_rate: float | None
    evictions: int
    bytes_host_to_device: float
    stall_s: float
    expert_bytes_per_device: list[float]


def _cache(records: RunRecords) -> CacheStats | None:
    if records.cache is None:
        return None
    steps = records.steps
    hits, misses = int(steps.cache_hits.sum()), int(steps.cache_misses.sum())
    params = records.cache
    return CacheStats(
        name=str(params["name"]),
        slots_per_layer=int(params["slots_per_layer"]),  # type: ignore[call-overload]
        prefetch=str(params["prefetch"]),
        step_aware=bool(params["step_aware"]),
        hits=hits,
        misses=misses,
        hit_rate=hits / (hits + misses) if hits + misses else None,
        evictions=int(steps.cache_evictions.sum()),
        bytes_host_to_device=float(steps.host_to_device_bytes.sum()),
        stall_s=float(steps.breakdown_NP[:, PHASES.index("transfer")].sum()),
        expert_bytes_per_device=records.devices.expert_weights_bytes.tolist(),
    )


class Result(_Out):
    """What ``result.json`` holds; ``per_step`` is a column table (``pandas.DataFrame`` ready)."""

    scenario: str
    executor: str
    device: str
    gpus: int
    phase: str
    routing_resolution: str
    steps: int
    throughput_tokens_per_s: float
    output_tokens_per_s: float
    latency_s: Latency
    time_breakdown_s: dict[str, float]
    tokens: TokenCounts
    memory: Memory
    alltoall_bytes: float
    alltoall_bytes_by_kind: dict[str, float]
    load_imbalance: float | None
    placement: PlacementStats
    cache: CacheStats | None
    simulated_seconds: float
    wall_seconds: float
    events: int
    serving: ServingResult | None = None
    per_step: dict[str, list[float | str | None]]

    @classmethod
    def from_records(cls, records: RunRecords) -> Result:
        steps, devices = records.steps, records.devices
        latency = steps.latency_s
        serving = records.serving
        # serving: the time requests were served, idle stretches between arrivals included
        simulated = serving.duration_s if serving is not None else float(latency.sum())
        percentiles = np.percentile(latency, [50, 99]) if latency.size else np.zeros(2)
        peak = devices.weights_bytes + devices.kv_cache_bytes + devices.activation_peak_bytes
        capacity_G = devices.capacity_bytes_G
        capacity_G = devices.capacity_bytes if capacity_G is None else capacity_G
        imbalance = steps.load_imbalance[~np.isnan(steps.load_imbalance)]
        breakdown = steps.breakdown_NP.sum(axis=0)
        served = serving_result(serving) if serving is not None else None
        return cls(
            scenario=records.scenario,
            executor=records.executor,
            device=records.device,
            gpus=records.gpus,
            phase=records.phase,
            routing_resolution=records.routing_resolution,
            steps=int(latency.size),
            throughput_tokens_per_s=float(steps.tokens.sum() / simulated) if simulated else 0.0,
            output_tokens_per_s=(
                served.output_tokens_per_s
                if served is not None
                else (records.output_tokens / simulated if simulated else 0.0)
            ),
            latency_s=Latency(
                mean=float(latency.mean()) if latency.size else 0.0,
                p50=float(percentiles[0]),
                p99=float(percentiles[1]),
            ),
            time_breakdown_s={name: float(breakdown[i]) for i, name in enumerate(PHASES)},
            tokens=TokenCounts(
                routed=int(steps.routed.sum()),
                processed=int(steps.processed.sum()),
                dropped=int(steps.dropped.sum()),
                padded=int(steps.padded.sum()),
            ),
            memory=Memory(
                capacity_bytes=devices.capacity_bytes,
                peak_bytes_per_device=peak.tolist(),
                weights_bytes_per_device=devices.weights_bytes.tolist(),
                kv_cache_bytes_per_device=devices.kv_cache_bytes.tolist(),
                activation_peak_bytes_per_device=devices.activation_peak_bytes.tolist(),
                out_of_memory=bool((peak > capacity_G).any()),
            ),
            alltoall_bytes=float(steps.alltoall_bytes_NK.sum()),
            alltoall_bytes_by_kind={
                kind: float(steps.alltoall_bytes_NK[:, k].sum())
                for k, kind in enumerate(LINK_KINDS)
                if kind != "local"
            },
            load_imbalance=float(imbalance.mean()) if imbalance.size else None,
            placement=_placement(records),
            cache=_cache(records),
            simulated_seconds=simulated,
            wall_seconds=records.wall_seconds,
            events=records.events,
            serving=served,
            per_step={
                "step": list(range(latency.size)),
                "start_s": steps.start_s.tolist(),
                "latency_s": latency.tolist(),
                "dropped": steps.dropped.tolist(),
                "padded": steps.padded.tolist(),
                "alltoall_bytes": steps.alltoall_bytes_NK.sum(axis=1).tolist(),
                "load_imbalance": [None if math.isnan(v) else v for v in steps.load_imbalance],
                **({} if serving is None else _serving_steps(serving)),
                **(
                    {}
                    if records.cache is None
                    else {
                        "cache_hits": steps.cache_hits.tolist(),
                        "cache_misses": steps.cache_misses.tolist(),
                        "transfer_s": steps.breakdown_NP[:, PHASES.index("transfer")].tolist(),
                    }
                ),
            },
        )


def _serving_steps(serving: ServingRecords) -> dict[str, list[float | str | None]]:
    """The per-step columns a serving run adds: the step's tokens, queues and KV blocks."""
    return {
        "prefill_tokens": serving.prefill_tokens.tolist(),
        "decode_tokens": serving.decode_tokens.tolist(),
        "running": serving.running.tolist(),
        "waiting": serving.waiting.tolist(),
        "kv_blocks": serving.kv_blocks.tolist(),
    } | ({} if serving.pool is None else {"pool": serving.pool.tolist()})
