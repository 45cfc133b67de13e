"""Flat, columnar records that the simulator and the reference executor emit.

One row per step (``StepRecords``), one per device (``DeviceRecords``) and, for the traced
window, one per span of work on a device stream (``SpanRecords``). ``Result`` is computed from
these alone. Columns are numpy arrays so a run of many steps costs no Python object per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.config import LINK_KINDS
from moesim.metrics.serving import ServingRecords

__all__ = [
    "PHASES",
    "DeviceRecords",
    "RunRecords",
    "SpanRecords",
    "StepRecords",
    "load_imbalance",
]

PHASES = (
    "attention",
    "dense_ffn",
    "gate",
    "alltoall",
    "expert",
    "transfer",
    "other",
    "allreduce",
)


def load_imbalance(tokens_NLG: np.ndarray) -> np.ndarray:
    """Mean over layers of max/mean expert tokens per GPU; NaN where no layer has any."""
    mean_NL = tokens_NLG.mean(axis=-1)
    ratio_NL = np.divide(
        tokens_NLG.max(axis=-1), mean_NL, out=np.full(mean_NL.shape, np.nan), where=mean_NL > 0
    )
    counted = (~np.isnan(ratio_NL)).sum(axis=-1)
    total = np.nansum(ratio_NL, axis=-1)
    return np.divide(total, counted, out=np.full(total.shape, np.nan), where=counted > 0)


@dataclass(frozen=True)
class StepRecords:
    """Per step: timing, token accounting (token-expert assignments) and traffic.

    ``breakdown_NP[n, p]`` is the critical-path time of phase ``PHASES[p]`` in step ``n``; a
    row sums to the step's latency. ``load_imbalance_N`` is NaN for a step with no expert work.
    ``alltoall_bytes_NK``: bytes over each link kind (``hardware.KINDS``); per MoE layer,
    ``busiest_tokens_NL`` is the expert tokens of the busiest GPU, ``expert_tokens_NL`` of all.
    Expert buffering: cache hits, misses and evictions over all GPUs and buffered layers, and
    the bytes copied from host to device (misses and prefetches).
    """

    start_s: np.ndarray
    latency_s: np.ndarray
    tokens: np.ndarray
    routed: np.ndarray
    processed: np.ndarray
    dropped: np.ndarray
    padded: np.ndarray
    alltoall_bytes_NK: np.ndarray
    load_imbalance: np.ndarray
    breakdown_NP: np.ndarray
    busiest_tokens_NL: np.ndarray
    expert_tokens_NL: np.ndarray
    cache_hits: np.ndarray
    cache_misses: np.ndarray
    cache_evictions: np.ndarray
    host_to_device_bytes: np.ndarray

    @staticmethod
    def concat(parts: list[StepRecords]) -> StepRecords:
        names = StepRecords.__dataclass_fields__
        return StepRecords(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
        )

    @staticmethod
    def empty(layers: int) -> StepRecords:
        """No steps (a run in which nothing ran), for a model of ``layers`` MoE layers."""
        widths = {"alltoall_bytes_NK": len(LINK_KINDS), "breakdown_NP": len(PHASES)}
        widths |= {"busiest_tokens_NL": layers, "expert_tokens_NL": layers}
        return StepRecords(
            **{
                name: np.zeros((0, widths[name]) if name in widths else 0)
                for name in StepRecords.__dataclass_fields__
            }
        )

    def head(self, steps: int) -> StepRecords:
        """The first ``steps`` steps."""
        return self.take(slice(steps))

    def take(self, index: slice | np.ndarray) -> StepRecords:
        """The steps at ``index`` (a slice, or step numbers in the order wanted)."""
        names = StepRecords.__dataclass_fields__
        return StepRecords(**{name: getattr(self, name)[index] for name in names})


@dataclass(frozen=True)
class DeviceRecords:
    """Per device: bytes of weights, KV cache and the activation peak over the run; expert
    tokens each GPU received per MoE layer, summed over steps (``expert_tokens_LG``). Devices
    of different memory (pools of different GPUs) give each one's in ``capacity_bytes_G``,
    and the smallest as ``capacity_bytes``."""

    capacity_bytes: float
    weights_bytes: np.ndarray
    kv_cache_bytes: np.ndarray
    activation_peak_bytes: np.ndarray
    expert_tokens_LG: np.ndarray
    expert_weights_bytes: np.ndarray
    capacity_bytes_G: np.ndarray | None = None

    @staticmethod
    def concat(parts: list[DeviceRecords]) -> DeviceRecords:
        """The devices of ``parts`` (runs of one model) one after another."""
        capacity_G = np.concatenate(
            [np.full(p.weights_bytes.size, p.capacity_bytes) for p in parts]
        )
        return DeviceRecords(
            capacity_bytes=float(capacity_G.min()),
            weights_bytes=np.concatenate([p.weights_bytes for p in parts]),
            kv_cache_bytes=np.concatenate([p.kv_cache_bytes for p in parts]),
            activation_peak_bytes=np.concatenate([p.activation_peak_bytes for p in parts]),
            expert_tokens_LG=np.concatenate([p.expert_tokens_LG for p in parts], axis=1),
            expert_weights_bytes=np.concatenate([p.expert_weights_bytes for p in parts]),
            capacity_bytes_G=capacity_G,
        )


@dataclass(frozen=True)
class SpanRecords:
    """Spans of work for the timeline: which device and stream, what, when."""

    device: np.ndarray
    stream: np.ndarray
    name: np.ndarray
    step: np.ndarray
    layer: np.ndarray
    start_s: np.ndarray
    duration_s: np.ndarray

    @staticmethod
    def empty() -> SpanRecords:
        return SpanRecords(*(np.array([]) for _ in range(7)))

    @staticmethod
    def concat(parts: list[SpanRecords]) -> SpanRecords:
        if not parts:
            return SpanRecords.empty()
        names = SpanRecords.__dataclass_fields__
        return SpanRecords(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
        )


@dataclass(frozen=True)
class RunRecords:
    """Everything one run emitted, plus what identifies it."""

    scenario: str
    executor: str
    device: str
    gpus: int
    phase: str
    steps: StepRecords
    devices: DeviceRecords
    placement: str = "contiguous"
    routing_resolution: str = "tokens"  # how the routing was drawn: tokens or counts
    cache: dict[str, object] | None = None  # the cache policy's parameters, None without one
    phy2log_LU: np.ndarray | None = None
    owner_LU: np.ndarray | None = None
    spans: SpanRecords = field(default_factory=SpanRecords.empty)
    wall_seconds: float = 0.0
    events: int = 0
    serving: ServingRecords | None = None  # a serving run's requests and queues
    output_tokens: float = 0.0  # tokens emitted (a fixed batch's; serving counts its requests')
