"""Every shipped scenario runs; the tiny ones match their golden result.json.

Regenerate the golden files after an intended change of the model with
``MOESIM_UPDATE_GOLDEN=1 pytest tests/test_shipped_scenarios.py`` and review the diff.
"""

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from moesim.api import load_scenario, run

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
SHIPPED = sorted(
    p
    for p in (ROOT / "scenarios").rglob("*.yaml")
    if not {"models", "paper", "sweeps"} & set(p.parts)
)
SWEEPS = sorted((ROOT / "scenarios" / "paper").glob("*.yaml"))
TINY = sorted((ROOT / "scenarios" / "tiny").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_runs(path: Path) -> None:
    scenario = load_scenario(path, ["workload.steps=2"])
    result, _ = run(scenario)
    model, gpus = scenario.model, scenario.cluster.gpus
    assert result.steps == 2
    assert sum(result.time_breakdown_s.values()) == pytest.approx(result.simulated_seconds)
    tokens = 2 * scenario.workload.tokens_per_step
    assert result.throughput_tokens_per_s == pytest.approx(tokens / result.simulated_seconds)
    moe_layers = model.moe_layers(scenario.stack())
    assert result.tokens.routed == moe_layers * tokens * model.top_k
    assert not result.memory.out_of_memory, "shipped scenarios should fit their hardware"
    plain = (
        scenario.policies.placement.name == "contiguous" and scenario.policies.cache.name == "none"
    )
    if plain and model.num_experts % gpus == 0:
        local = model.total_moe_layers * model.num_experts // gpus
        weights = (model.non_expert_params + local * model.expert_params) * model.dtype_bytes
        assert result.memory.weights_bytes_per_device == [pytest.approx(weights)] * gpus


def _close(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in sorted(keys) for d in _close(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _close(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, float) and isinstance(b, float | int):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_scenarios_match_golden(path: Path) -> None:
    result, _ = run(load_scenario(path))
    document = json.loads(result.model_dump_json())
    document.pop("wall_seconds")
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("MOESIM_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(document, indent=1) + "\n")
    expected = json.loads(golden.read_text())
    assert _close(document, expected) == []


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_paper_sweep_expands_to_valid_scenarios(path: Path) -> None:
    """As many points as the grid's product times the zip's rows, each a valid scenario."""
    import math

    from moesim.sweep import load_sweep

    raw = yaml.safe_load(path.read_text())
    grid = math.prod(len(values) for values in raw.get("grid", {}).values())
    rows = len(next(iter(raw["zip"].values()))) if raw.get("zip") else 1
    sweep = load_sweep(path)
    assert len(sweep.points) == grid * rows >= 2
    for point in sweep.points:
        scenario = load_scenario(sweep.base, point.overrides)
        for key, value in point.params:
            if key == "cluster.nodes":
                assert scenario.cluster.nodes == value
            elif key == "workload.batch_size":
                assert scenario.workload.batch_size == value
