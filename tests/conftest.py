"""Shared fixtures: the repository's folders and a small, hand-checkable hardware profile."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import moesim  # noqa: F401  (registers the policies)
from moesim.config import Scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"

# Round numbers so that expected durations can be computed by hand.
SIMPLE_PROFILE: dict[str, Any] = {
    "name": "simple",
    "compute": {
        "peak_flops": {"fp32": 1e12, "fp16": 2e12},
        "efficiency": 1.0,
        "launch_overhead": 0.0,
        "provenance": {"source": "assumption", "ref": "test"},
    },
    "memory": {
        "capacity": "1GB",
        "bandwidth": 1e30,
        "efficiency": 1.0,
        "provenance": {"source": "assumption", "ref": "test"},
    },
    "links": {
        "nvlink": {
            "bandwidth": 1e9,
            "latency": 1e-6,
            "efficiency": 1.0,
            "provenance": {"source": "assumption", "ref": "test"},
        },
        "host": {
            "bandwidth": 1e9,
            "latency": 1e-5,
            "efficiency": 1.0,
            "provenance": {"source": "assumption", "ref": "test"},
        },
        "network": {
            "bandwidth": 1e8,
            "latency": 1e-5,
            "efficiency": 1.0,
            "provenance": {"source": "assumption", "ref": "test"},
        },
    },
    "host": {"cpu": "test", "memory": "1TB", "provenance": {"source": "assumption", "ref": "t"}},
}

TINY_MODEL: dict[str, Any] = {
    "name": "tiny",
    "layers": 2,
    "moe_every": 2,
    "d_model": 4,
    "d_ffn": 8,
    "num_experts": 4,
    "top_k": 1,
    "heads": 1,
    "vocab_size": 10,
    "dtype": "fp32",
}


# A 2-layer MoE whose every layer routes: big enough for the reference executor to move rows,
# small enough to run for real in milliseconds.
SMALL_MOE: dict[str, Any] = {
    **TINY_MODEL,
    "layers": 2,
    "moe_every": 1,
    "d_model": 32,
    "d_ffn": 64,
    "heads": 2,
    "num_experts": 4,
    "top_k": 2,
    "vocab_size": 64,
}


def workload(**changes: Any) -> dict[str, Any]:
    """The tests' default workload (decode, 4 sequences, 1 position of context, 1 step)."""
    return {
        "phase": "decode",
        "batch_size": 4,
        "seq_len": 1,
        "steps": 1,
        "routing": {"source": "synthetic"},
        **changes,
    }


def trace_workload(path: Path, expert_ids: np.ndarray, **changes: Any) -> dict[str, Any]:
    """A workload replaying ``expert_ids`` (saved to ``path``); one token per sequence."""
    np.savez(path, expert_ids=expert_ids)
    steps, _, tokens, _ = expert_ids.shape
    routing = {"source": "trace", "path": str(path)}
    return workload(batch_size=tokens, steps=steps, routing=routing, **changes)


def make_scenario(**changes: Any) -> Scenario:
    """A tiny scenario on the simple profile; ``changes`` replace top-level sections."""
    data: dict[str, Any] = {
        "name": "test",
        "seed": 3,
        "model": copy.deepcopy(TINY_MODEL),
        "cluster": {"nodes": 1, "gpus_per_node": 2, "device": copy.deepcopy(SIMPLE_PROFILE)},
        "workload": workload(),
        "policies": {"gating": {"name": "dynamic"}},
    }
    data.update(copy.deepcopy(changes))
    return Scenario.model_validate(data)


@pytest.fixture
def root() -> Path:
    return ROOT
