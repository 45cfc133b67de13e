"""Shared pieces of the serving tests: a request stream on the test profile and the
fixed-batch step a lone request's prefill or decode must cost."""

from __future__ import annotations

from typing import Any

from moesim.api import run
from tests.conftest import SIMPLE_PROFILE, TINY_MODEL, make_scenario, workload

PROMPT, OUTPUT = 48, 5


def serving_workload(
    count: int, rate: float | None = None, prompt: Any = None, output: Any = None
) -> dict[str, Any]:
    """``count`` requests (offline, or Poisson at ``rate``) of fixed PROMPT and OUTPUT tokens
    unless lengths are given; synthetic routing."""
    arrival = {"process": "offline"} if rate is None else {"process": "poisson", "rate": rate}
    requests = {
        "count": count,
        "arrival": arrival,
        "prompt_tokens": prompt or {"distribution": "fixed", "value": PROMPT},
        "output_tokens": output or {"distribution": "fixed", "value": OUTPUT},
    }
    return {"phase": "serving", "requests": requests, "routing": {"source": "synthetic"}}


def fixed_latency(phase: str, seq_len: int, device: dict[str, Any] = SIMPLE_PROFILE) -> float:
    """The p50 latency of a fixed batch of one sequence on one GPU of ``device``."""
    scenario = make_scenario(
        model=dict(TINY_MODEL),
        cluster={"nodes": 1, "gpus_per_node": 1, "device": device},
        workload=workload(phase=phase, batch_size=1, seq_len=seq_len, steps=1),
    )
    return run(scenario)[0].latency_s.p50
