"""Prefill/decode disaggregation: the two pools of a cluster and the run's joined records.

The prefill pool serves every request as if it wanted one token (its prompt, then the first
token); the decode pool holds every request with its full lengths, but gets only those with
more to emit, as their KV lands (``kv_transfer``). A request's first token counts when its KV
lands; one that wants a single token is done in the prefill pool. A decode stretch stops
where the prefill pool may hand over next: the end of its running step (or now, while it has
work and is between steps), else the next arrival.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import simpy

from moesim.config import Scenario, SloSpec
from moesim.errors import ConfigError
from moesim.metrics import StepRecords
from moesim.metrics.serving import RequestRecords, ServingRecords
from moesim.sim.kv_transfer import KVHandoff
from moesim.sim.serving_pool import Pool
from moesim.workload import Requests

__all__ = ["disaggregated_pools", "merged_records"]


def disaggregated_pools(
    scenario: Scenario, requests: Requests, env: simpy.Environment, next_arrival: Callable
) -> tuple[list[Pool], KVHandoff]:
    """The prefill and the decode pool (in that order) and the handoff between them."""
    firsts = Requests(
        requests.arrival_s, requests.prompt_tokens, np.ones_like(requests.output_tokens)
    )
    prefill = _pool("prefill", scenario, firsts, env, next_arrival, len(requests))
    more = int(np.count_nonzero(requests.output_tokens > 1))

    def horizon() -> float:
        if prefill.busy_until is not None:
            bound = prefill.busy_until
        else:
            bound = next_arrival() if prefill.idle else env.now
        return min(handoff.next_landing(), bound)

    decode = _pool("decode", scenario, requests, env, horizon, more)
    handoff = KVHandoff(scenario, prefill, decode)
    prefill.on_steps.append(handoff.prefilled)
    decode.before_plan = handoff.admit
    return [prefill, decode], handoff


def _pool(
    role: str,
    scenario: Scenario,
    requests: Requests,
    env: simpy.Environment,
    horizon: Callable,
    expected: int,
) -> Pool:
    """The pool of ``role``; what it refuses names the pool (its GPUs are counted in it)."""
    cluster = scenario.cluster
    try:
        return Pool(scenario.on(cluster.pool(cluster.role(role))), requests, env, horizon, expected)
    except ConfigError as error:
        field = f"cluster.pools ({role})" + (f": {error.field}" if error.field else "")
        raise ConfigError(error.file, field, error.message) from None


def merged_records(
    pools: list[Pool], handoff: KVHandoff, duration_s: float, slo: SloSpec | None
) -> tuple[ServingRecords, StepRecords]:
    """The run's requests (first token and finish where they happened), and both pools'
    steps and per-step rows in time order (each row one pool's step)."""
    prefill, decode = pools
    first = prefill.groups.records(int(prefill.kv.blocks_A.sum()), duration_s, slo)
    rest = decode.groups.records(int(decode.kv.blocks_A.sum()), duration_s, slo)
    a, b = first.requests, rest.requests
    more = b.output_tokens > 1
    steps = StepRecords.concat([prefill.records(), decode.records()])
    order = np.argsort(steps.start_s, kind="stable")

    def rows(name: str) -> np.ndarray:
        return np.concatenate([getattr(first, name), getattr(rest, name)])[order]

    requests = RequestRecords(
        arrival_s=a.arrival_s,
        scheduled_s=a.scheduled_s,
        first_token_s=np.where(more, b.first_token_s, a.first_token_s),
        finish_s=np.where(more, b.finish_s, a.finish_s),
        prompt_tokens=b.prompt_tokens,
        output_tokens=b.output_tokens,
        preemptions=a.preemptions + b.preemptions,
        kv_transfer_s=handoff.transfer_s,
    )
    serving = ServingRecords(
        requests=requests,
        itl_s=rest.itl_s,
        prefill_tokens=rows("prefill_tokens"),
        decode_tokens=rows("decode_tokens"),
        running=rows("running"),
        waiting=rows("waiting"),
        kv_blocks=rows("kv_blocks"),
        kv_capacity_blocks=first.kv_capacity_blocks + rest.kv_capacity_blocks,
        duration_s=duration_s,
        slo_ttft_s=first.slo_ttft_s,
        slo_tpot_s=first.slo_tpot_s,
        slo_percentile=first.slo_percentile,
        pool=np.repeat(
            ["prefill", "decode"], [first.prefill_tokens.size, rest.prefill_tokens.size]
        )[order],
    )
    return serving, steps.take(order)
