"""Which data-parallel attention group of a pool gets each request (``policies.router``).

- ``round_robin``: groups in turn, in arrival order (what a load balancer without state does);
- ``least_loaded``: the group with the fewest outstanding tokens, the prompt tokens it has not
  prefilled and the output tokens it has not emitted of every request it holds (SGLang's
  ``shortest_queue`` by tokens, llm-d's load-aware scoring); ties go to the lowest group.
  Requests that arrive together are routed one after another, each seeing the ones before.
"""

from __future__ import annotations

import numpy as np

from moesim.policies import ServingState

__all__ = ["Router", "outstanding_tokens"]


def outstanding_tokens(state: ServingState) -> int:
    """Tokens a group still owes the requests it holds (waiting and running)."""
    held = np.concatenate([state.running, state.waiting])
    prompt = np.maximum(state.prefill_tokens_R[held] - state.context_R[held], 0)  # decodes: 0
    output = state.output_tokens_R[held] - state.generated_R[held]
    return int(prompt.sum() + output.sum())


class Router:
    """Routes requests to ``len(states)`` groups; ``extra_A`` adds tokens a group holds
    outside its state (KV in flight to it)."""

    def __init__(self, name: str, states: list[ServingState]) -> None:
        self.name, self.states = name, states
        self._turn = 0

    def route(
        self,
        requests: np.ndarray,
        extra_A: np.ndarray | None = None,
        tokens_R: np.ndarray | None = None,
    ) -> np.ndarray:
        """The group of each of ``requests`` (in order), each adding ``tokens_R`` to its
        group's load (by default its prompt and output); the caller makes them arrive."""
        groups = len(self.states)
        if self.name == "round_robin":
            chosen = (self._turn + np.arange(requests.size)) % groups
            self._turn = int((self._turn + requests.size) % groups)
            return chosen
        load = np.array([outstanding_tokens(s) for s in self.states], dtype=np.int64)
        if extra_A is not None:
            load = load + extra_A
        chosen = np.empty(requests.size, dtype=np.int64)
        if tokens_R is None:
            state = self.states[0]  # every group's columns hold every request's lengths
            tokens_R = state.prompt_tokens_R[requests] + state.output_tokens_R[requests]
        for index, tokens in enumerate(tokens_R):
            group = int(np.argmin(load))
            chosen[index] = group
            load[group] += tokens
        return chosen
