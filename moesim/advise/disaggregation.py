"""The search key ``disaggregation``: colocated (``none``) or a prefill pool of a share of the
GPUs, and the screen's estimate for a disaggregated candidate.

``disaggregation: [none, {prefill_fraction: [0.25, 0.5]}]`` expands into one configuration per
fraction. A fraction of a multi-node cluster must be whole nodes (the pools' KV then crosses
the network); a one-node cluster splits its GPUs (KV over NVLink). Both pools take the
configuration's device and parallel layout.

The estimate treats the pools apart: the decode pool is the colocated estimate without
prompts (``estimate.steady_state`` with a prompt costing nothing) under the TPOT target; the
prefill pool batches the prompts that arrived during its last step, up to the scheduler's
token budget, under the TTFT target (``_prefill_rate``). The capacity is the smaller pool's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from moesim.advise.estimate import Estimate, estimate
from moesim.advise.traffic import Traffic
from moesim.config import ParallelSpec, load_scenario
from moesim.errors import ConfigError
from moesim.sweep import Point

__all__ = [
    "KEY",
    "disaggregated",
    "estimate_pools",
    "expand",
    "label_pools",
    "pool_points",
    "resolve",
]

KEY = "disaggregation"


def expand(values: list[Any], file: str) -> list[Any]:
    """The key's values, one per configuration: ``none`` or ``{prefill_fraction: f}``."""
    expanded: list[Any] = []
    for index, value in enumerate(values):
        where = f"search.{KEY}[{index}]"
        if value == "none":
            expanded.append("none")
            continue
        if not isinstance(value, dict) or set(value) != {"prefill_fraction"}:
            raise ConfigError(file, where, "expected none or {prefill_fraction: [...]}")
        fractions = value["prefill_fraction"]
        for fraction in fractions if isinstance(fractions, list) else [fractions]:
            if isinstance(fraction, bool) or not isinstance(fraction, int | float):
                raise ConfigError(file, where, f"prefill_fraction {fraction!r} is not a number")
            if not 0 < fraction < 1:
                raise ConfigError(file, where, f"prefill_fraction {fraction} is not in (0, 1)")
            expanded.append({"prefill_fraction": float(fraction)})
    if not expanded:
        raise ConfigError(file, f"search.{KEY}", "empty list: the search space is empty")
    return expanded


def disaggregated(point: Point) -> float | None:
    """The point's prefill fraction, or None for colocated serving."""
    value = dict(point.params).get(KEY, "none")
    return None if value == "none" else float(value["prefill_fraction"])


def _others(point: Point) -> Point:
    return Point(point.index, tuple((k, v) for k, v in point.params if k != KEY))


def _split(base: Path, point: Point) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The prefill and decode pools (nodes, GPUs per node) and the layout they share."""
    fraction = disaggregated(point)
    cluster = load_scenario(base, _others(point).overrides).cluster
    nodes, per_node, gpus = cluster.nodes, cluster.gpus_per_node, cluster.gpus
    prefill = round(fraction * gpus)
    if nodes > 1 and prefill % per_node == 0 and 0 < prefill < gpus:
        first, second = {"nodes": prefill // per_node}, {"nodes": nodes - prefill // per_node}
    elif nodes == 1 and 0 < prefill < gpus:
        first, second = {"gpus_per_node": prefill}, {"gpus_per_node": gpus - prefill}
    else:
        raise ConfigError(
            None,
            KEY,
            f"prefill_fraction {fraction:g} of {nodes} x {per_node} GPUs is not a whole "
            "number of nodes (or of GPUs, on one node) for each pool",
        )
    return first, second, cluster.parallel.model_dump()


def resolve(base: Path, point: Point) -> Point:
    """The point with its ``disaggregation`` as scenario keys: ``cluster.pools`` (and the
    layout moved into them); raises ``ConfigError`` for a split that cannot be."""
    if disaggregated(point) is None:
        return _others(point)
    prefill, decode, parallel = _split(base, point)
    pools = [
        {"role": "prefill", "nodes": 1, **prefill, "parallel": parallel},
        {"role": "decode", "nodes": 1, **decode, "parallel": parallel},
    ]
    params = [(k, v) for k, v in _others(point).params if k != "cluster.parallel"]
    default = ParallelSpec().model_dump()
    return Point(point.index, (*params, ("cluster.parallel", default), ("cluster.pools", pools)))


def pool_points(base: Path, point: Point) -> tuple[Point, Point]:
    """Each pool's deployment as a plain cluster, for the screen to time."""
    prefill, decode, _ = _split(base, point)
    others = _others(point).params
    return tuple(  # type: ignore[return-value]
        Point(point.index, (*others, *((f"cluster.{k}", v) for k, v in pool.items())))
        for pool in (prefill, decode)
    )


def _prefill_rate(timing: dict[str, Any], ttft_s: float | None) -> float:
    """Prompts/s the prefill pool sustains within ``ttft_s`` (or at all, without it).

    A step of ``m`` mean prompts per group lasts ``a + b m`` (through one prompt's step ``t1``
    and a full one's ``tk`` of ``k``); at ``r`` prompts/s per group a step serves those that
    arrived during the one before, ``T = max(t1, a / (1 - b r))``, at most ``k``: ``r <=
    k / tk``. A prompt waits at most a step and then runs in one, with the percentile
    prompt's extra ``lone - t1``: ``TTFT ~ 2 T - t1 + (lone - t1)``, optimistic (a step of
    waiting counted as ``T - t1``). The KV transfer is left to the simulation: it only lowers
    the rate, so the bound stays optimistic."""
    groups, k = int(timing["groups"]), int(timing.get("prefill_batch", 1))
    t1 = float(timing["prefill_mean_s"])
    tk = float(timing.get("prefill_full_s", t1))
    if k == 1 or not math.isfinite(tk):
        k, tk = 1, t1
    b = min(max((tk - t1) / (k - 1), 0.0), t1) if k > 1 else t1
    a = t1 - b
    rate = k / tk
    if ttft_s is not None:
        longest = (ttft_s - float(timing["prefill_lone_s"])) / 2 + t1  # the longest T allowed
        if longest < t1:
            return 0.0
        if b > 0:
            rate = min(rate, (1.0 - a / longest) / b)
    return groups * rate


def estimate_pools(
    prefill: dict[str, Any],
    decode: dict[str, Any],
    traffic: Traffic,
    ttft_s: float | None,
    tpot_s: float | None,
    max_sequences: int,
    memory_fraction: float,
    margin: float,
) -> Estimate:
    """The screen's estimate of a disaggregated candidate from its pools' timing rows."""
    no_prompts = decode | {
        "prefill_mean_s": float(decode["decode_s"][0]),
        "prefill_lone_s": float(decode["decode_lone_s"]),
        "prefill_local_fraction": 0.0,
    }
    loose = 1.0 + margin

    # the decode pool emits all but the first token of each request
    rest = replace(traffic, output_mean=max(traffic.output_mean - 1.0, 1e-9))

    def decoding(tpot: float | None) -> Estimate:
        return estimate(no_prompts, rest, None, tpot, max_sequences, memory_fraction, 0.0)

    def scaled(target: float | None) -> float | None:
        return None if target is None else target * loose

    at, relaxed, ceiling = decoding(tpot_s), decoding(scaled(tpot_s)), decoding(None)
    capacity = min(at.capacity_rps, _prefill_rate(prefill, ttft_s))
    binding = at.binding if capacity == at.capacity_rps else "ttft" if ttft_s else "saturation"
    misses = ""
    if ttft_s is not None and float(prefill["prefill_lone_s"]) > ttft_s * loose:
        misses = "ttft"
    elif tpot_s is not None and float(decode["decode_lone_s"]) > tpot_s * loose:
        misses = "tpot"
    gpus = int(prefill["gpus"]) + int(decode["gpus"])
    step = at.tokens_per_s_per_user
    return Estimate(
        capacity_rps=capacity,
        binding=binding,
        relaxed_rps=min(relaxed.capacity_rps, _prefill_rate(prefill, scaled(ttft_s))),
        ceiling_rps=min(ceiling.capacity_rps, _prefill_rate(prefill, None)),
        floor_tpot_s=float(decode["decode_lone_s"]),
        floor_ttft_s=float(prefill["prefill_lone_s"]),
        floor_misses=misses,
        tokens_per_s_per_gpu=capacity * traffic.output_mean / gpus,
        tokens_per_s_per_user=step if math.isfinite(step) else 0.0,
    )


def label_pools(point: Point) -> str:
    """How the report names a configuration's serving mode."""
    fraction = disaggregated(point)
    return "colocated" if fraction is None else f"disaggregated ({fraction:g} prefill)"
