"""The requests of a serving run, held by the data-parallel attention groups that serve them
(one per GPU, or per ``attention_tp`` GPUs), and the paged KV cache each group gets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.config import Scenario, SloSpec
from moesim.errors import ConfigError
from moesim.metrics.serving import RequestRecords, ServingRecords
from moesim.policies import KVBlocks, PlacementPlan, ServingState, StepOutcome, StepPlan
from moesim.sim.memory import serving_kv_blocks, weights_bytes
from moesim.workload import Requests

__all__ = ["Groups", "KVCache", "kv_cache", "step_tokens"]

_NAN = float("nan")
_NONE = np.zeros(0, dtype=np.int64)
_GIB = 2.0**30


@dataclass(frozen=True)
class KVCache:
    """Per GPU: weight bytes and the activation peak of the largest step; per attention
    group ``A``: the KV blocks left for its cache (each of its GPUs holds its share)."""

    weights_G: np.ndarray
    blocks_A: np.ndarray
    activation_G: np.ndarray


def step_tokens(scenario: Scenario, requests: Requests) -> int:
    """The most tokens one attention group's step can hold: the scheduler's budget, or for
    static batches a batch of the longest prompts."""
    params = scenario.policies.scheduler
    budget = getattr(params, "max_batch_tokens", None)
    if budget is None:
        budget = params.batch_size * int(requests.prompt_tokens.max())
    return int(budget)


def kv_cache(scenario: Scenario, plan: PlacementPlan, requests: Requests) -> KVCache:
    """Each attention group's KV cache; refuses a GPU with no room for one block."""
    params, cluster = scenario.policies.scheduler, scenario.cluster
    weights_G = weights_bytes(scenario, plan)
    blocks_G, activation_G = serving_kv_blocks(
        scenario,
        weights_G,
        step_tokens(scenario, requests),
        params.block_tokens,
        params.memory_fraction,
    )
    if blocks_G.min() < 1:
        worst = int(np.argmin(blocks_G))
        raise ConfigError(
            None,
            "cluster.device",
            f"no room for a KV cache on GPU {worst}: its weights and a step's activations take "
            f"{(weights_G[worst] + activation_G[worst]) / _GIB:.2f} GiB of "
            f"{params.memory_fraction:g} x {cluster.device.memory.capacity / _GIB:.2f} GiB",
        )
    blocks_A = blocks_G.reshape(-1, cluster.parallel.attention_tp).min(axis=1)
    return KVCache(weights_G, blocks_A, activation_G)


class Groups:
    """Every attention group's state, the per-request timestamps and the per-step rows."""

    def __init__(self, requests: Requests, blocks_A: np.ndarray, block_tokens: int) -> None:
        self.arrival_s = requests.arrival_s
        self.prompt, self.output = requests.prompt_tokens, requests.output_tokens
        size = len(requests)
        self.group_R = np.full(size, -1, dtype=np.int64)  # set as each is routed
        self.states = [
            ServingState(self.prompt, self.output, KVBlocks(int(b), block_tokens)) for b in blocks_A
        ]
        self.scheduled_s = np.full(size, _NAN)
        self.first_token_s = np.full(size, _NAN)
        self.finish_s = np.full(size, _NAN)
        self.last_token_s = np.full(size, _NAN)
        self.itl: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []  # per step: prefill, decode tokens, running, waiting, KV
        self.done = 0

    def oldest_wait(self, state: ServingState, now: float) -> float:
        return float(now - self.arrival_s[state.waiting[0]]) if state.waiting.size else 0.0

    def schedule(self, plans: list[StepPlan], start: float) -> None:
        """Stamp the requests that ``plans`` schedule for the first time at ``start``."""
        request = np.concatenate([p.request for p in plans if p.is_prefill.any()] or [_NONE])
        fresh = request[np.isnan(self.scheduled_s[request])]
        self.scheduled_s[fresh] = start

    def record_queue(
        self, prefill_tokens: int, decode_tokens: int, plans: list[StepPlan], steps: int
    ) -> None:
        """The rows of a stretch of ``steps`` steps of ``plans``, once they are applied: the
        steps' prefill and decode tokens and sequences, the requests left waiting, the KV
        blocks held at the stretch's end."""
        states = self.states
        row = [
            prefill_tokens,
            decode_tokens,
            sum(p.request.size for p in plans),
            sum(s.waiting.size for s in states),
            sum(s.kv.used_blocks for s in states),
        ]
        self.rows.append(np.repeat(np.array(row, dtype=np.int64)[:, None], steps, axis=1))

    def emit(self, start: float, latency_n: np.ndarray, outcomes: list[StepOutcome]) -> None:
        """Timestamp what a stretch's steps (``latency_n`` each, from ``start``) emitted: each
        emitting request one token per step."""
        emitted = np.concatenate([o.emitted for o in outcomes] or [_NONE])
        if not emitted.size:
            return
        first = np.concatenate([o.first_token for o in outcomes])
        finished = np.concatenate([o.finished for o in outcomes])
        ends = start + np.cumsum(latency_n)
        later = emitted  # those that emitted before: a token gap
        if first.size:
            self.first_token_s[first] = ends[0]
            later = emitted[~np.isnan(self.last_token_s[emitted])]
        self.itl.append(ends[0] - self.last_token_s[later])
        if latency_n.size > 1:  # a decode stretch: the gap before each further token
            self.itl.append(np.repeat(latency_n[1:], emitted.size))
        self.last_token_s[emitted] = ends[-1]
        self.finish_s[finished] = ends[-1]
        self.done += finished.size

    def records(
        self, kv_capacity_blocks: int, duration_s: float, slo: SloSpec | None
    ) -> ServingRecords:
        """What the run's requests and steps went through, for ``serving_result``."""
        rows = np.concatenate(self.rows, axis=1) if self.rows else np.zeros((5, 0), np.int64)
        return ServingRecords(
            requests=RequestRecords(
                arrival_s=self.arrival_s,
                scheduled_s=self.scheduled_s,
                first_token_s=self.first_token_s,
                finish_s=self.finish_s,
                prompt_tokens=self.prompt,
                output_tokens=self.output,
                preemptions=np.sum([s.preemptions_R for s in self.states], axis=0),
            ),
            itl_s=np.concatenate(self.itl) if self.itl else np.zeros(0),
            prefill_tokens=rows[0],
            decode_tokens=rows[1],
            running=rows[2],
            waiting=rows[3],
            kv_blocks=rows[4],
            kv_capacity_blocks=kv_capacity_blocks,
            duration_s=float(duration_s),
            slo_ttft_s=slo.ttft_s if slo else None,
            slo_tpot_s=slo.tpot_s if slo else None,
            slo_percentile=slo.percentile if slo else 99.0,
        )
