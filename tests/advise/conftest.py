"""A small search space that simulates in seconds: a two-layer MoE serving short requests on
one or two GPUs of two hand-made devices (a slow cheap one and a fast dear one)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SIMPLE_PROFILE, SMALL_MOE

PRICES = {"slow": 1.0, "fast": 1.7}


def _profile(name: str, speed: float) -> dict[str, Any]:
    profile = copy.deepcopy(SIMPLE_PROFILE)
    profile["name"] = name
    profile["compute"]["peak_flops"] = {"fp32": 2e9 * speed, "fp16": 4e9 * speed}
    profile["compute"]["launch_overhead"] = 2e-6
    profile["memory"]["bandwidth"] = 2e10 * speed
    return profile


BASE: dict[str, Any] = {
    "name": "tiny-serving",
    "seed": 1,
    "model": {**SMALL_MOE, "name": "small-moe"},
    "cluster": {"nodes": 1, "gpus_per_node": 1, "device": "slow"},
    "workload": {
        "phase": "serving",
        "requests": {
            "count": 100,
            "arrival": {"process": "poisson", "rate": 100.0},
            "prompt_tokens": {"distribution": "uniform", "low": 16, "high": 96},
            "output_tokens": {"distribution": "uniform", "low": 4, "high": 12},
        },
        "routing": {"source": "synthetic", "skew": 0.5},
    },
    "policies": {
        "gating": {"name": "dynamic"},
        "scheduler": {"name": "continuous", "max_sequences": 16, "max_batch_tokens": 256},
    },
}

SLO = {"ttft_s": 0.004, "tpot_s": 0.002, "percentile": 99}


def spec_document(**changes: Any) -> dict[str, Any]:
    spec = {
        "base": "base.yaml",
        "slo": SLO,
        "objective": {"rate": 3000.0},
        "prices": dict(PRICES),
        "search": {
            "cluster.device": ["slow", "fast"],
            "cluster.gpus_per_node": [1, 2],
            "policies.scheduler.max_sequences": [2, 16],
        },
        "evaluate": {"duration_s": 0.1, "rate_tolerance": 0.05, "runners_up": 1},
    }
    spec.update(changes)
    return spec


def write_space(folder: Path, **changes: Any) -> Path:
    """The base scenario, the two device profiles and a spec in ``folder``; the spec's path."""
    profiles = folder / "hardware_profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    for name, speed in (("slow", 1.0), ("fast", 2.0)):
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump(_profile(name, speed)))
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_document(**changes), sort_keys=False))
    return spec


@pytest.fixture
def space(tmp_path: Path) -> Path:
    return write_space(tmp_path)
