"""``advice.md``: the best configuration, the runners-up, why the others lost and, when nothing
meets the targets, which target binds and by how much."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from moesim.advise.disaggregation import label_pools
from moesim.advise.outputs import probes
from moesim.advise.search import Candidate, Search
from moesim.sweep.point import label

__all__ = ["advice_markdown", "binding", "closest_miss"]


def _params(candidate: Candidate) -> str:
    return ", ".join(f"`{key}={label(value)}`" for key, value in candidate.point.params)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:,.4g} ms"


def binding(candidate: Candidate, search: Search) -> tuple[str, float, float, float] | None:
    """For a candidate that meets the SLO at no rate: the target that binds hardest, the value
    reached at the SLO percentile (at its lowest simulated rate, or the screen's floor), the
    target, and the rate (0 for a floor)."""
    slo = search.advice.slo
    runs = probes(candidate)
    if runs:
        low = runs[0]
        reached = {"TTFT": low["ttft_at_percentile_s"], "TPOT": low["tpot_at_percentile_s"]}
        rate = low["rate"]
    elif candidate.status == "cannot_meet_slo" and candidate.estimate is not None:
        reached = {"TTFT": candidate.estimate.floor_ttft_s, "TPOT": candidate.estimate.floor_tpot_s}
        rate = 0.0
    else:
        return None
    targets = {"TTFT": slo.ttft_s, "TPOT": slo.tpot_s}
    ratios = {k: reached[k] / t for k, t in targets.items() if t is not None and reached[k] >= 0}
    if not ratios:
        return None
    name = max(ratios, key=lambda k: ratios[k])
    return name, reached[name], targets[name], rate


def closest_miss(search: Search) -> tuple[Candidate, tuple[str, float, float, float]] | None:
    """The candidate that comes nearest to the targets, with its binding target."""
    scored = [(c, b) for c in search.candidates if (b := binding(c, search)) is not None]
    if not scored:
        return None
    return min(scored, key=lambda cb: (cb[1][1] / cb[1][2], cb[0].point.index))


def _best(best: Candidate, search: Search, rows: dict[int, dict[str, Any]]) -> list[str]:
    row, slo = rows[best.point.index], search.advice.slo
    replicas = row["replicas"]
    lines = [
        "## Best",
        "",
        f"{_params(best)}: {best.gpus} x {best.device}"
        + (f", {replicas} replicas" if replicas and replicas > 1 else ""),
        "",
        f"- capacity {row['capacity_rps']:.4g} requests/s per replica "
        f"({row['capacity_rps_per_gpu']:.3g} per GPU), binary-searched to within "
        f"{search.advice.spec.evaluate.rate_tolerance:.0%}",
        f"- ${row['cost_per_hour']:,.2f} an hour, ${row['cost_per_million_output_tokens']:,.3f} "
        f"per million output tokens, {row['goodput_per_dollar']:,.0f} requests within the SLO "
        "per dollar at capacity",
        f"- at {row['rate_per_replica_rps']:.4g} requests/s per replica: p99 TTFT "
        f"{_ms(row['ttft_p99_s'])} (target {_ms(slo.ttft_s)}), p99 TPOT "
        f"{_ms(row['tpot_p99_s'])} (target {_ms(slo.tpot_s)})",
        "- `moesim run best.yaml` runs it again ("
        + ("one replica's share of the traffic)" if replicas else "at its capacity)"),
        "",
    ]
    return lines


def _runners_up(search: Search, rows: dict[int, dict[str, Any]]) -> list[str]:
    others = search.ranking[1 : 1 + search.advice.spec.evaluate.runners_up]
    if not others:
        return []
    lines = [
        "## Runners-up",
        "",
        "| rank | configuration | GPUs | replicas | capacity (req/s) | $/hour | $/M tokens | "
        "p99 TTFT | p99 TPOT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for place, candidate in enumerate(others, start=2):
        row = rows[candidate.point.index]
        lines.append(
            f"| {place} | {_params(candidate)} | {candidate.gpus} x {candidate.device} | "
            f"{row['replicas']} | {row['capacity_rps']:.4g} | {row['cost_per_hour']:,.2f} | "
            f"{row['cost_per_million_output_tokens']:,.3f} | {_ms(row['ttft_p99_s'])} | "
            f"{_ms(row['tpot_p99_s'])} |"
        )
    return [*lines, ""]


def _modes(search: Search, rows: dict[int, dict[str, Any]]) -> list[str]:
    """The best simulated configuration of each serving mode, where the search had both."""
    best: dict[str, Candidate] = {}
    for candidate in search.ranking:  # best first
        best.setdefault(label_pools(candidate.point), candidate)
    colocated = [mode for mode in best if mode == "colocated"]
    if not colocated or len(best) < 2:
        return []
    lines = [
        "## Colocated against disaggregated",
        "",
        "| mode | configuration | GPUs | replicas | capacity (req/s) | per GPU | $/hour | "
        "p99 TTFT | p99 TPOT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, candidate in best.items():
        row = rows[candidate.point.index]
        lines.append(
            f"| {mode} | {_params(candidate)} | {candidate.gpus} x {candidate.device} | "
            f"{row['replicas']} | {row['capacity_rps']:.4g} | {row['capacity_rps_per_gpu']:.3g} | "
            f"{row['cost_per_hour']:,.2f} | {_ms(row['ttft_p99_s'])} | {_ms(row['tpot_p99_s'])} |"
        )
    return [*lines, ""]


def _why(search: Search) -> list[str]:
    """Each losing configuration under one reason: memory, TTFT, TPOT, saturation, cost,
    unsupported, invalid, error."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    best = search.ranking[0] if search.ranking else None
    for candidate in search.candidates:
        if candidate is best:
            continue
        status = candidate.status
        if status == "out_of_memory":
            groups["memory"].append(candidate)
        elif status in ("ok", "screened_out"):
            groups["cost"].append(candidate)
        elif status in ("misses_slo", "cannot_meet_slo"):
            bound = binding(candidate, search)
            groups[bound[0] if bound else "saturation"].append(candidate)
        else:
            groups[status].append(candidate)
    lines = ["## Why the others lost", ""]
    explain = {
        "memory": "cannot hold their weights (or a KV cache beside them)",
        "TTFT": "miss the TTFT target at every rate (at the screen's floor or in simulation)",
        "TPOT": "miss the TPOT target at every rate (at the screen's floor or in simulation)",
        "saturation": "saturate before they meet the targets",
        "cost": (
            "cost as much or more"
            if search.advice.spec.objective.rate is not None
            else "serve fewer requests within the SLO per dollar"
        )
        + ": simulated, or by the screen's optimistic bound (screened out)",
        "unsupported": "are refused by the serving simulation (screened only; their estimates "
        "are in candidates.parquet)",
        "invalid": "are not valid configurations",
        "error": "failed while they ran",
    }
    for key, text in explain.items():
        members = groups.get(key, [])
        if not members:
            continue
        lines.append(f"- **{key}**: {len(members)} {text}.")
        reasons = Counter(c.reason for c in members if c.reason and key != "cost")
        for reason, count in reasons.most_common(3):
            lines.append(f"  - {count} x {reason}")
        if key == "cost":
            simulated = [c for c in members if c.status == "ok"]
            lines.append(
                f"  - {len(simulated)} simulated and met the SLO, "
                f"{len(members) - len(simulated)} screened out"
            )
    return [*lines, ""]


def _nothing(search: Search) -> list[str]:
    lines = ["## Nothing meets the targets", ""]
    closest = closest_miss(search)
    if closest is None:
        return [*lines, "No configuration could be evaluated (see the reasons below).", ""]
    candidate, (name, reached, target, rate) = closest
    where = f"at {rate:.3g} requests/s" if rate else "at the screen's floor (no load)"
    lines.append(
        f"{name} binds: the closest configuration, {_params(candidate)} on {candidate.gpus} x "
        f"{candidate.device}, reaches {name} {_ms(reached)} at the "
        f"{search.advice.slo.percentile:g}th percentile {where}, against a target of "
        f"{_ms(target)}: {reached / target:.2f}x the target ({reached / target - 1:.0%} over)."
    )
    return [*lines, ""]


def advice_markdown(search: Search, rows: list[dict[str, Any]]) -> str:
    """The text of ``advice.md``; ``rows`` are ``candidate_rows(search)``."""
    advice, traffic = search.advice, search.traffic
    slo, objective = advice.slo, advice.spec.objective
    by_index = {row["candidate"]: row for row in rows}
    targets = " and ".join(
        f"{name} {_ms(value)}"
        for name, value in (("TTFT", slo.ttft_s), ("TPOT", slo.tpot_s))
        if value is not None
    )
    goal = (
        f"serve {objective.rate:g} requests/s at the least cost (replicas of one configuration "
        "share the traffic)"
        if objective.rate is not None
        else "the most requests within the SLO per dollar"
    )
    statuses = Counter(c.status for c in search.candidates)
    lines = [
        f"# moesim advise: {advice.path}",
        "",
        f"Base `{advice.base}`: {advice.scenario.model.name}, "
        f"{advice.spec.evaluate.duration_s:g} s of traffic per simulation (prompts of "
        f"{traffic.prompt_mean:,.0f} tokens on average, outputs of {traffic.output_mean:,.0f}). "
        f"SLO: p{slo.percentile:g} {targets}. Objective: {goal}.",
        "",
        f"{len(search.candidates)} configurations: "
        + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        + ".",
        "",
    ]
    ratios = [
        c.simulated["capacity_rps"] / c.estimate.capacity_rps
        for c in search.candidates
        if c.status == "ok" and c.estimate is not None and c.estimate.capacity_rps > 0
    ]
    if ratios:
        lines += [
            f"The screen's estimates against the simulation: simulated / estimated capacity "
            f"{min(ratios):.2f} to {max(ratios):.2f} over the {len(ratios)} simulated "
            "configurations (the bound scales by the largest).",
            "",
        ]
    if search.ranking:
        lines += _best(search.ranking[0], search, by_index)
        lines += _runners_up(search, by_index)
        lines += _modes(search, by_index)
    else:
        lines += _nothing(search)
    return "\n".join(lines + _why(search))
