"""What a search writes: ``candidates.parquet`` (one row per configuration) and ``best.yaml``
(the recommended configuration as a scenario ``moesim run`` takes)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from moesim.advise.capacity import rate_overrides
from moesim.advise.search import Candidate, Search
from moesim.advise.spec import point_overrides
from moesim.config import find_file, parse_override, read_yaml
from moesim.files import publish
from moesim.sweep.point import label

__all__ = [
    "atomic",
    "best_overrides",
    "candidate_rows",
    "probes",
    "scenario_document",
    "write_best",
    "write_candidates",
]

_GIB = 2.0**30
_FILES = (
    ("workload", "requests", "trace"),
    ("workload", "routing", "path"),
    ("workload", "routing", "fit"),
    ("policies", "placement", "path"),
)


def probes(candidate: Candidate) -> list[dict[str, Any]]:
    """The serving runs of a candidate's capacity search, by rate."""
    return json.loads(candidate.simulated.get("probes") or "[]")


def _at_target(candidate: Candidate) -> dict[str, Any]:
    rate = candidate.simulated.get("at_rate_rps")
    return next((run for run in probes(candidate) if run["rate"] == rate), {})


def _economics(candidate: Candidate, search: Search) -> dict[str, Any]:
    """Replicas, cost and cost per million output tokens of a simulated candidate."""
    simulated = candidate.simulated
    capacity = simulated.get("capacity_rps")
    if candidate.status != "ok" or not capacity:
        return {}
    rate = search.advice.spec.objective.rate
    replicas = simulated.get("replicas") or 1
    cost = replicas * candidate.cost_per_hour
    served = rate if rate is not None else capacity
    tokens_per_hour = served * search.traffic.output_mean * 3600
    at = _at_target(candidate)
    return {
        "replicas": replicas,
        "rate_per_replica_rps": simulated.get("at_rate_rps"),
        "cost_per_hour": cost,
        "cost_per_million_output_tokens": cost / tokens_per_hour * 1e6,
        "goodput_per_dollar": capacity * 3600 / candidate.cost_per_hour,
        "ttft_p99_s": at.get("ttft_p99_s"),
        "tpot_p99_s": at.get("tpot_p99_s"),
    }


def candidate_rows(search: Search) -> list[dict[str, Any]]:
    """One row per configuration, in search order; parameters as ``sweep`` labels them."""
    rank = {id(c): i + 1 for i, c in enumerate(search.ranking)}
    rows = []
    for candidate in search.candidates:
        estimate, timing = candidate.estimate, candidate.timing
        capacity = candidate.simulated.get("capacity_rps")
        row: dict[str, Any] = {"candidate": candidate.point.index}
        row |= {key: label(value) for key, value in candidate.point.params}
        row |= {
            "device": candidate.device,
            "gpus": candidate.gpus,
            "price_per_gpu_hour": candidate.price,
            "status": candidate.status,
            "reason": candidate.reason,
            "rank": rank.get(id(candidate)),
            "weights_gib_per_gpu": timing["weights_bytes"] / _GIB
            if "weights_bytes" in timing
            else None,
            "estimated_capacity_rps": estimate.capacity_rps if estimate else None,
            "bound_capacity_rps": candidate.bound_rps or None,
            "capacity_rps": capacity,
            "capacity_rps_per_gpu": capacity / candidate.gpus if capacity is not None else None,
            "replicas": None,
            "rate_per_replica_rps": None,
            "cost_per_hour": None,
            "cost_per_million_output_tokens": None,
            "goodput_per_dollar": None,
            "ttft_p99_s": None,
            "tpot_p99_s": None,
        }
        rows.append(row | _economics(candidate, search))
    kinds: dict[str, set[type]] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                kinds.setdefault(key, set()).add(type(value))
    mixed = {k for k, types in kinds.items() if len(types) > 1 and types != {int, float}}
    return [{k: str(v) if k in mixed and v is not None else v for k, v in r.items()} for r in rows]


def atomic(path: Path, write: Any) -> None:
    """``write(temporary)`` then publish it as ``path``: a crash never leaves half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(temporary)
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_candidates(path: Path, search: Search) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(candidate_rows(search))
    atomic(path, lambda temporary: pq.write_table(table, temporary))


def best_overrides(search: Search) -> list[str]:
    """The overrides of the base that make the recommended run: the spec's SLO, the
    configuration, the arrival rate of one replica and its requests."""
    best = search.ranking[0]
    rate = best.simulated["at_rate_rps"]
    duration_s = search.advice.spec.evaluate.duration_s
    return [
        *search.advice.fixed,
        *point_overrides(best.concrete),
        *rate_overrides(rate, duration_s),
    ]


def _set(data: dict[str, Any], key: str, value: Any, near: Path) -> None:
    """``data[a][b]... = value``, reading a card or profile named on the way into a mapping."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and parts[: depth + 1] in (["model"], ["cluster", "device"]):
            kind = "model" if part == "model" else "device"
            found = find_file(kind, child, near)
            child = read_yaml(found) if found is not None else {}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def scenario_document(base: Path, overrides: list[str], near: Path) -> dict[str, Any]:
    """The base scenario's YAML with ``overrides`` applied, its named files made absolute and
    its card and profile names resolved as the base resolves them, to be saved in ``near``."""
    data = read_yaml(base)
    where = base.resolve().parent
    for text in overrides:
        key, value = parse_override(text)
        _set(data, key, value, where)
    for kind, keys in (("model", ("model",)), ("device", ("cluster", "device"))):
        owner = data
        for key in keys[:-1]:
            owner = owner.get(key, {})
        name = owner.get(keys[-1])
        if isinstance(name, str):
            found = find_file(kind, name, where)
            if found is not None and find_file(kind, name, near.resolve()) != found:
                owner[keys[-1]] = str(found.resolve())
    for keys in _FILES:
        owner = data
        for key in keys[:-1]:
            owner = owner.get(key) if isinstance(owner.get(key), dict) else {}
        named = owner.get(keys[-1])
        relative = isinstance(named, str) and not Path(named).is_absolute()
        if relative and (where / named).exists():
            owner[keys[-1]] = str((where / named).resolve())
    return data


def write_best(path: Path, search: Search) -> None:
    """``best.yaml``: the recommended configuration at one replica's share of the rate."""
    best = search.ranking[0]
    document = scenario_document(search.advice.base, best_overrides(search), path.parent)
    document["name"] = f"{document.get('name', 'advised')}-advised"
    simulated = best.simulated
    replicas = simulated.get("replicas") or 1
    share = f"one of {replicas} replicas, " if replicas > 1 else ""
    header = (
        f"# moesim advise {search.advice.path}: the recommended configuration\n"
        f"# ({', '.join(f'{k}={label(v)}' for k, v in best.point.params)}),\n"
        f"# {share}at {simulated['at_rate_rps']:.4g} requests/s (capacity "
        f"{simulated['capacity_rps']:.4g} requests/s).\n"
        f"# moesim run {path.name} shows its numbers again.\n"
    )
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)

    def write(temporary: str) -> None:
        Path(temporary).write_text(text, encoding="utf-8")

    atomic(path, write)
