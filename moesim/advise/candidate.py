"""Candidate: one configuration of a search, its status and the figures found so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moesim.advise.estimate import Estimate
from moesim.config import Scenario
from moesim.sweep import Point

__all__ = ["Candidate"]


@dataclass
class Candidate:
    """One configuration through the search: what it is, its status and the figures so far."""

    point: Point
    status: str = ""
    reason: str = ""
    serving: Scenario | None = None
    device: str = ""
    gpus: int = 0
    price: float = 0.0
    max_sequences: int = 0
    memory_fraction: float = 0.9
    timing_id: str = ""
    capacity_id: str = ""
    concrete: Point | None = None  # the point as scenario keys (pools for disaggregation)
    # (timing id, deployment timed): the configuration's, or its prefill and decode pools'
    timed: list[tuple[str, Point]] = field(default_factory=list)
    decode_timing_id: str = ""  # disaggregated: the decode pool's (timing_id: the prefill's)
    timing: dict[str, Any] = field(default_factory=dict)
    decode_timing: dict[str, Any] = field(default_factory=dict)
    estimate: Estimate | None = None
    bound_rps: float = 0.0
    simulated: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_per_hour(self) -> float:
        """Dollars per hour of one replica."""
        return self.gpus * self.price
