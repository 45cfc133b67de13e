"""The traffic a search serves, as the screen needs it: mean prompt and output lengths and the
prompt length at the SLO's percentile, from the base scenario's own request table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.api import request_table
from moesim.config import Scenario

__all__ = ["Traffic", "traffic_of"]


@dataclass(frozen=True)
class Traffic:
    """Tokens per request: ``prompt_mean``, ``output_mean`` and ``prompt_quantile`` (the
    prompt length at the SLO percentile, nearest rank)."""

    prompt_mean: float
    output_mean: float
    prompt_quantile: int

    @property
    def decode_context(self) -> int:
        """The mean context a decoding sequence attends over: its prompt and half its output."""
        return max(1, round(self.prompt_mean + self.output_mean / 2))


def traffic_of(scenario: Scenario, percentile: float) -> Traffic:
    requests = request_table(scenario)
    prompt_R = requests.prompt_tokens
    quantile = np.percentile(prompt_R, percentile, method="inverted_cdf")
    return Traffic(float(prompt_R.mean()), float(requests.output_tokens.mean()), int(quantile))
