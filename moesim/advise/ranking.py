"""How a search ranks candidates: the screen's optimistic bound and objective, the simulated
objective, and the candidates the search must still simulate or explain."""

from __future__ import annotations

import math

from moesim.advise.candidate import Candidate
from moesim.advise.disaggregation import disaggregated

__all__ = [
    "achieved",
    "bound",
    "calibration",
    "optimistic",
    "optimistic_key",
    "sort_key",
    "unsimulated_modes",
    "why_not",
]


def calibration(candidates: list[Candidate]) -> float:
    """How far the simulation has beaten the estimate so far: the largest ratio of simulated
    to estimated capacity among the simulated candidates, at least 1."""
    ratios = [
        c.simulated["capacity_rps"] / c.estimate.capacity_rps
        for c in candidates
        if c.status == "ok" and c.estimate is not None and c.estimate.capacity_rps > 0
    ]
    return max([1.0, *ratios])


def bound(candidate: Candidate, margin: float, scale: float) -> float:
    """The screen's optimistic capacity: the estimate for targets loosened by ``margin``
    (without targets where that meets no rate), times ``1 + margin`` and the calibration."""
    estimate = candidate.estimate
    relaxed = estimate.relaxed_rps or estimate.ceiling_rps
    return relaxed * (1.0 + margin) * scale


def optimistic(candidate: Candidate, rate: float | None) -> float:
    """The best objective the candidate could reach by its ``bound_rps``: the cost per hour
    of serving ``rate`` (to minimise), or minus its goodput per dollar (maximise)."""
    if rate is not None:
        replicas = math.ceil(rate / candidate.bound_rps * (1 - 1e-12))
        return replicas * candidate.cost_per_hour
    return -candidate.bound_rps * 3600 / candidate.cost_per_hour


def optimistic_key(candidate: Candidate, rate: float | None) -> tuple[float, float]:
    """``_sort_key``'s first two entries by the bound: what the candidate could reach."""
    replicas = math.ceil(rate / candidate.bound_rps * (1 - 1e-12)) if rate is not None else 1
    return (optimistic(candidate, rate), -candidate.bound_rps * replicas)


def achieved(candidate: Candidate, rate: float | None) -> float:
    """The objective the simulation found, in the same sense as ``optimistic``."""
    simulated = candidate.simulated
    if rate is not None:
        return simulated["replicas"] * candidate.cost_per_hour
    return -simulated["capacity_rps"] * 3600 / candidate.cost_per_hour


def sort_key(candidate: Candidate, rate: float | None) -> tuple[float, float, int]:
    """Best objective first; among equals, the most headroom (all replicas' capacity)."""
    simulated = candidate.simulated
    total = simulated.get("capacity_rps", 0.0) * (simulated.get("replicas") or 1)
    return (achieved(candidate, rate), -total, candidate.point.index)


def unsimulated_modes(
    viable: list[Candidate], finished: list[Candidate], rate: float | None
) -> list[Candidate]:
    """Where the search has colocated and disaggregated configurations, the one with the
    best bound of each mode that had none simulated."""
    modes: dict[bool, list[Candidate]] = {}
    for candidate in viable:
        modes.setdefault(disaggregated(candidate.point) is None, []).append(candidate)
    ran = {disaggregated(c.point) is None for c in finished}
    if len(modes) < 2:
        return []
    return [
        min(group, key=lambda c: (*optimistic_key(c, rate), c.point.index))
        for mode, group in modes.items()
        if mode not in ran
    ]


def why_not(candidate: Candidate, kth: Candidate, rate: float | None, keep: int) -> str:
    place = "the best" if keep == 1 else f"the {keep} best"
    if rate is not None:
        return (
            f"its bound ({candidate.bound_rps:.3g} requests/s) needs at least "
            f"${optimistic(candidate, rate):,.2f} an hour; {place} simulated cost at most "
            f"${achieved(kth, rate):,.2f}"
        )
    return (
        f"its bound gives at most {-optimistic(candidate, rate):,.0f} requests per dollar; "
        f"{place} simulated reach {-achieved(kth, rate):,.0f}"
    )
