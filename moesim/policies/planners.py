"""Placement planners: from a routing history to a ``PlacementPlan``.

A planner sees ``load_HLE``, the tokens each logical expert ``E`` of each MoE layer ``L``
received in each of ``H`` history steps, and never time. Every GPU keeps the same number of
slots (``ceil``/``floor`` of ``E / G`` when it does not divide), the seed paper's constraint.

- ``contiguous``: expert ``e`` on GPU ``e * G // E``; ``round_robin``: on GPU ``e % G``.
- ``greedy`` (Huang et al. §VII): experts by historical mean load, heaviest first, each onto the
  least-loaded GPU that still has room (longest-processing-time).
- ``anti_correlation`` (§VII): the same, but a GPU's score for expert ``a`` is
  ``sum over its experts m of (load_m + 0.5 * pearson(a, m))``, so experts that fire together
  land apart. The co-activation graph is the Pearson matrix of the experts' per-step loads.
- ``replicated`` (DeepSeek EPLB): ``redundant_experts`` extra slots go one by one to the expert
  with the most load per replica; slots are then packed heaviest first onto the least-loaded
  GPU with room, avoiding a second copy of an expert on one GPU where possible.
- ``file``: an EPLB ``phy2log`` plan from an ``.npz`` (``moesim run --out`` writes one).

Adding a planner: one class with ``Params`` and ``plan`` (derived from ``LearningPlanner``
and ``LearnedParams`` if it reads the history), decorated ``@PLACEMENT.register``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from moesim.config import PLACEMENT, Policy, PolicyParams
from moesim.errors import ConfigError
from moesim.policies.placement import PlacementPlan, contiguous_plan, load_eplb

__all__ = ["LearnedParams", "LearningPlanner", "PlannerParams", "balanced_slots", "pearson"]

CORRELATION_WEIGHT = 0.5  # Huang et al. §VII: load plus 0.5 x correlation


class PlannerParams(PolicyParams):
    """``history_steps``: warm-up steps the planner learns from (excluded from the result);
    ``oracle``: plan from the measured steps themselves instead (an upper bound)."""

    history_steps: int = Field(default=0, ge=0, le=100_000)
    oracle: bool = False


class LearnedParams(PlannerParams):
    """Parameters of a planner that learns from history: a 50-step window by default."""

    history_steps: int = Field(default=50, ge=0, le=100_000)


class LearningPlanner(Policy):
    """A planner that reads the routing history (``plan_placement`` draws it only for these)."""

    learns = True


def balanced_slots(units: int, gpus: int) -> np.ndarray:
    """Slots per GPU: ``units // gpus``, the first ``units % gpus`` GPUs one more."""
    return units // gpus + (np.arange(gpus) < units % gpus)


def pearson(load_HE: np.ndarray) -> np.ndarray:
    """Correlation of experts' per-step loads; 0 where an expert's load never varies."""
    centred = load_HE - load_HE.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    cov = centred.T @ centred
    scale = np.outer(norm, norm)
    return np.divide(cov, scale, out=np.zeros_like(cov, dtype=np.float64), where=scale > 0)


def _mean_load(load_HLE: np.ndarray) -> np.ndarray:
    if load_HLE.shape[0] == 0:
        raise ConfigError(
            None,
            "policies.placement.history_steps",
            "this planner learns from history: set history_steps >= 1 or oracle",
        )
    return load_HLE.mean(axis=0)


def _from_owner(owner_LE: np.ndarray, gpus: int) -> PlacementPlan:
    layers, experts = owner_LE.shape
    phy2log = np.broadcast_to(np.arange(experts), (layers, experts)).copy()
    return PlacementPlan(phy2log, owner_LE, gpus, experts)


@PLACEMENT.register("contiguous")
class Contiguous(Policy):
    class Params(PlannerParams):
        name: Literal["contiguous"] = "contiguous"

    def plan(self, load_HLE: np.ndarray, gpus: int) -> PlacementPlan:
        return contiguous_plan(load_HLE.shape[2], gpus, load_HLE.shape[1])


@PLACEMENT.register("round_robin")
class RoundRobin(Policy):
    class Params(PlannerParams):
        name: Literal["round_robin"] = "round_robin"

    def plan(self, load_HLE: np.ndarray, gpus: int) -> PlacementPlan:
        layers, experts = load_HLE.shape[1:]
        owner = np.broadcast_to(np.arange(experts) % gpus, (layers, experts)).copy()
        return _from_owner(owner, gpus)


def _greedy_layer(mean_E: np.ndarray, gpus: int, correlation_EE: np.ndarray | None) -> np.ndarray:
    experts = mean_E.size
    room_G = balanced_slots(experts, gpus)
    load_G = np.zeros(gpus)
    correlation_GE = np.zeros((gpus, experts))  # sum of correlations to the GPU's experts
    owner = np.empty(experts, dtype=np.int64)
    for expert in np.argsort(-mean_E, kind="stable"):
        score = load_G.copy()
        if correlation_EE is not None:
            score += CORRELATION_WEIGHT * correlation_GE[:, expert]
        score[room_G == 0] = np.inf
        gpu = int(np.argmin(score))
        owner[expert] = gpu
        room_G[gpu] -= 1
        load_G[gpu] += mean_E[expert]
        if correlation_EE is not None:
            correlation_GE[gpu] += correlation_EE[expert]
    return owner


@PLACEMENT.register("greedy")
class Greedy(LearningPlanner):
    class Params(LearnedParams):
        name: Literal["greedy"] = "greedy"

    def plan(self, load_HLE: np.ndarray, gpus: int) -> PlacementPlan:
        mean_LE = _mean_load(load_HLE)
        owner = np.stack([_greedy_layer(mean_E, gpus, None) for mean_E in mean_LE])
        return _from_owner(owner, gpus)


@PLACEMENT.register("anti_correlation")
class AntiCorrelation(LearningPlanner):
    class Params(LearnedParams):
        name: Literal["anti_correlation"] = "anti_correlation"

    def plan(self, load_HLE: np.ndarray, gpus: int) -> PlacementPlan:
        # The paper's load term is each expert's share of the step's tokens.
        share_HLE = load_HLE / np.maximum(load_HLE.sum(axis=2, keepdims=True), 1)
        mean_LE = _mean_load(share_HLE)
        owner = np.stack(
            [
                _greedy_layer(mean_E, gpus, pearson(share_HLE[:, layer]))
                for layer, mean_E in enumerate(mean_LE)
            ]
        )
        return _from_owner(owner, gpus)


@PLACEMENT.register("replicated")
class Replicated(LearningPlanner):
    class Params(LearnedParams):
        name: Literal["replicated"] = "replicated"
        redundant_experts: int = Field(default=0, ge=0)

    def plan(self, load_HLE: np.ndarray, gpus: int) -> PlacementPlan:
        mean_LE = _mean_load(load_HLE)
        layers, experts = mean_LE.shape
        units = experts + self.params.redundant_experts
        if self.params.redundant_experts > experts * (gpus - 1):
            raise ConfigError(
                None,
                "policies.placement.redundant_experts",
                f"{self.params.redundant_experts} exceeds {experts * (gpus - 1)}, the most that "
                f"keeps at most one copy of an expert per GPU ({experts} experts, {gpus} GPUs)",
            )
        if units % gpus:
            raise ConfigError(
                None,
                "policies.placement.redundant_experts",
                f"{experts} experts + {self.params.redundant_experts} redundant = {units} slots "
                f"do not split evenly over {gpus} GPUs",
            )
        phy2log = np.empty((layers, units), dtype=np.int64)
        owner = np.empty((layers, units), dtype=np.int64)
        for layer in range(layers):
            phy2log[layer], owner[layer] = self._layer(mean_LE[layer], units, gpus)
        # Order slots by GPU so that slot u sits on GPU u // (U / G), as EPLB lays them out.
        order = np.argsort(owner, axis=1, kind="stable")
        return PlacementPlan(
            np.take_along_axis(phy2log, order, axis=1),
            np.take_along_axis(owner, order, axis=1),
            gpus,
            experts,
        )

    @staticmethod
    def _layer(mean_E: np.ndarray, units: int, gpus: int) -> tuple[np.ndarray, np.ndarray]:
        count_E = np.ones(mean_E.size, dtype=np.int64)
        for _ in range(units - mean_E.size):
            count_E[np.argmax(mean_E / count_E)] += 1
        slots = np.repeat(np.arange(mean_E.size), count_E)
        per_replica = (mean_E / count_E)[slots]
        room_G = np.full(gpus, units // gpus)
        load_G = np.zeros(gpus)
        holds = np.zeros((gpus, mean_E.size), dtype=bool)
        owner = np.empty(units, dtype=np.int64)
        for slot in np.argsort(-per_replica, kind="stable"):
            expert = slots[slot]
            score = load_G + np.where(holds[:, expert], np.inf, 0.0)
            score[room_G == 0] = np.inf
            if np.isinf(score).all():  # every GPU with room already holds a copy
                score = np.where(room_G > 0, load_G, np.inf)
            gpu = int(np.argmin(score))
            owner[slot], room_G[gpu] = gpu, room_G[gpu] - 1
            load_G[gpu] += per_replica[slot]
            holds[gpu, expert] = True
        return slots, owner


@PLACEMENT.register("file")
class FromFile(Policy):
    class Params(PlannerParams):
        name: Literal["file"] = "file"
        path: str

    def plan(self, load_HLE: np.ndarray, gpus: int) -> PlacementPlan:
        return load_eplb(self.params.path, gpus, load_HLE.shape[2], load_HLE.shape[1])
