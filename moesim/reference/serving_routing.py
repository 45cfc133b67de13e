"""The routing a serving reference run replays: drawn from the scenario's synthetic law, the
same on every rank, ahead of the steps that use it."""

from __future__ import annotations

import numpy as np

from moesim.config import Scenario
from moesim.workload import SyntheticRouter

__all__ = ["SERVING_ROUTING_STREAM", "RoutingStream"]

# spawn key of the serving routing stream: the simulator's, so both draw from the same law
SERVING_ROUTING_STREAM = 5
_BLOCK_CELLS = 1 << 22  # routing drawn ahead, in (step, layer, token, choice) cells


class RoutingStream:
    """The step's routing, drawn ahead in blocks of steps as wide as the widest step (each step
    takes its tokens' rows from the next one: the same law, tokens i.i.d. given the step's
    expert ranking), so that drawing stays off the time between steps but once a block; steps
    too wide for a block of two are drawn one by one, as many tokens as they have."""

    def __init__(
        self, scenario: Scenario, layers: int, width: int, *key: int, most_steps: int = 1 << 30
    ) -> None:
        model = scenario.model
        seed = np.random.SeedSequence(scenario.seed, spawn_key=(SERVING_ROUTING_STREAM, *key))
        self.router = SyntheticRouter(
            scenario.workload.routing,
            model.num_experts,
            model.top_k,
            layers,
            np.random.default_rng(seed),
        )
        self.width = width
        self.block = min(most_steps, _BLOCK_CELLS // max(layers * width * model.top_k, 1))
        if self.block > 1:
            self._next()

    def _next(self) -> None:
        self.ids_NLTK = self.router.draw(self.block, self.width)
        self.step = 0

    def take(self, tokens: int) -> np.ndarray:
        """``expert_ids_NLTK`` of the next step, of ``tokens`` tokens (at most ``width``)."""
        if self.block <= 1:
            return self.router.draw(1, tokens)
        if self.step == self.block:
            self._next()
        self.step += 1
        return self.ids_NLTK[self.step - 1 : self.step, :, :tokens]
