"""Serving metrics: per-request records and the summary computed from them alone.

A request arrives, is first scheduled (``scheduled_s``), emits its first token at the end of
the step that completes its prompt (``first_token_s``) and finishes with its last token
(``finish_s``); NaN marks what had not happened when the run ended. TTFT = first token -
arrival; TPOT = (finish - first token) / (output tokens - 1); E2E = finish - arrival; queue =
first scheduled - arrival; ITL: the gap before each token after the first, as emitted.
A request meets the SLO when its TTFT and TPOT are within the targets that are set;
``slo_attainment`` is the share of arrived requests that completed and met it, goodput the
rate of those per simulated second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = ["Percentiles", "RequestRecords", "ServingRecords", "ServingResult", "serving_result"]


@dataclass(frozen=True)
class RequestRecords:
    """One row per request (numpy columns)."""

    arrival_s: np.ndarray
    scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    preemptions: np.ndarray
    kv_transfer_s: np.ndarray | None = None  # disaggregated: KV ready to landed, NaN if none

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        decoded = self.output_tokens - 1
        span = self.finish_s - self.first_token_s
        return np.divide(span, decoded, out=np.full(span.shape, np.nan), where=decoded > 0)

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    def table(self) -> dict[str, np.ndarray]:
        """The columns of ``requests.parquet``."""
        return {
            "request": np.arange(self.arrival_s.size),
            "arrival_s": self.arrival_s,
            "first_token_s": self.first_token_s,
            "finish_s": self.finish_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "e2e_s": self.e2e_s,
            "preemptions": self.preemptions,
        } | ({} if self.kv_transfer_s is None else {"kv_transfer_s": self.kv_transfer_s})


@dataclass(frozen=True)
class ServingRecords:
    """A serving run: its requests, every inter-token gap, per-step queue and KV state, the
    targets it is judged by and the simulated time it covered."""

    requests: RequestRecords
    itl_s: np.ndarray
    prefill_tokens: np.ndarray  # per step: its prefill and decode tokens,
    decode_tokens: np.ndarray
    running: np.ndarray  # the sequences it runs,
    waiting: np.ndarray  # the requests left waiting and
    kv_blocks: np.ndarray  # the KV blocks held after it
    kv_capacity_blocks: int
    duration_s: float
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    slo_percentile: float = 99.0
    pool: np.ndarray | None = None  # per step of a disaggregated run: the pool that ran it


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Percentiles(_Out):
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @staticmethod
    def of(values: np.ndarray) -> Percentiles:
        done = values[np.isfinite(values)]
        if done.size == 0:
            return Percentiles(mean=None, p50=None, p90=None, p99=None)
        p50, p90, p99 = np.percentile(done, [50, 90, 99])
        return Percentiles(mean=float(done.mean()), p50=float(p50), p90=float(p90), p99=float(p99))


class KvUse(_Out):
    capacity_blocks: int
    peak_blocks: int
    mean_blocks: float


class ServingResult(_Out):
    arrived: int
    completed: int
    running: int
    waiting: int
    ttft_s: Percentiles
    tpot_s: Percentiles
    itl_s: Percentiles
    e2e_s: Percentiles
    queue_s: Percentiles
    input_tokens_per_s: float
    output_tokens_per_s: float
    goodput_requests_per_s: float
    slo_attainment: float | None
    slo_met: bool | None
    preemptions: int
    max_running: int
    kv_cache: KvUse
    kv_transfer_s: Percentiles | None = None  # disaggregated serving: each request's KV move


def _meets(records: ServingRecords) -> np.ndarray | None:
    """Which requests completed within the SLO, or None without one."""
    if records.slo_ttft_s is None and records.slo_tpot_s is None:
        return None
    requests = records.requests
    ok = np.isfinite(requests.finish_s)
    if records.slo_ttft_s is not None:
        ok &= requests.ttft_s <= records.slo_ttft_s
    if records.slo_tpot_s is not None:  # a one-token request has no TPOT to miss
        tpot = requests.tpot_s
        ok &= np.isnan(tpot) | (tpot <= records.slo_tpot_s)
    return ok


def _slo_met(records: ServingRecords) -> bool | None:
    """Whether the SLO's percentile of TTFT and TPOT, over arrived requests, is within the
    targets (a request that did not finish counts as missing them)."""
    if records.slo_ttft_s is None and records.slo_tpot_s is None:
        return None
    q = records.slo_percentile
    requests = records.requests
    for values, target in (
        (requests.ttft_s, records.slo_ttft_s),
        (requests.tpot_s, records.slo_tpot_s),
    ):
        if target is None:
            continue
        filled = np.where(np.isnan(values) & ~np.isfinite(requests.finish_s), np.inf, values)
        filled = np.sort(filled[~np.isnan(filled)])
        if filled.size and filled[max(math.ceil(q / 100 * filled.size) - 1, 0)] > target:
            return False  # the nearest-rank percentile: no arithmetic on infinities
    return True


def serving_result(records: ServingRecords) -> ServingResult:
    """The summary of a serving run, from its records alone."""
    requests = records.requests
    arrived = int(requests.arrival_s.size)
    done = np.isfinite(requests.finish_s)
    started = np.isfinite(requests.scheduled_s)
    duration = records.duration_s
    rate = 1.0 / duration if duration > 0 else 0.0
    meets = _meets(records)
    met = int(meets.sum()) if meets is not None else int(done.sum())
    # pools: each pool's peak and mean added up (their caches are apart)
    pools = (
        [records.kv_blocks]
        if records.pool is None
        else [records.kv_blocks[records.pool == role] for role in np.unique(records.pool)]
    )
    return ServingResult(
        arrived=arrived,
        completed=int(done.sum()),
        running=int((started & ~done).sum()),
        waiting=int((~started).sum()),
        ttft_s=Percentiles.of(requests.ttft_s),
        tpot_s=Percentiles.of(requests.tpot_s),
        itl_s=Percentiles.of(records.itl_s),
        e2e_s=Percentiles.of(requests.e2e_s),
        queue_s=Percentiles.of(requests.scheduled_s - requests.arrival_s),
        input_tokens_per_s=float(requests.prompt_tokens[done].sum()) * rate,
        output_tokens_per_s=float(requests.output_tokens[done].sum()) * rate,
        goodput_requests_per_s=met * rate,
        slo_attainment=(met / max(arrived, 1)) if meets is not None else None,
        slo_met=_slo_met(records),
        preemptions=int(requests.preemptions.sum()),
        max_running=int(records.running.max(initial=0)),
        kv_cache=KvUse(
            capacity_blocks=records.kv_capacity_blocks,
            peak_blocks=sum(int(kv.max(initial=0)) for kv in pools),
            mean_blocks=sum(float(kv.mean()) if kv.size else 0.0 for kv in pools),
        ),
        kv_transfer_s=(
            None if requests.kv_transfer_s is None else Percentiles.of(requests.kv_transfer_s)
        ),
    )
