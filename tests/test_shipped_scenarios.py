"""Every shipped scenario runs; the tiny ones match their golden result.json.

Regenerate the golden files after an intended change of the model with
``MOESIM_UPDATE_GOLDEN=1 pytest tests/test_shipped_scenarios.py`` and review the diff.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.api import load_scenario, run
from moesim.config import ParallelSpec

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
SCENARIOS = sorted(
    p
    for p in (ROOT / "scenarios").rglob("*.yaml")
    if not {"models", "paper", "sweeps", "advise"} & set(p.parts)  # advise: specs, not scenarios
)


def _serves(path: Path) -> bool:
    return yaml.safe_load(path.read_text())["workload"].get("phase") == "serving"


SHIPPED = [p for p in SCENARIOS if not _serves(p)]
SERVING = [p for p in SCENARIOS if _serves(p)]
SERVING_REQUESTS = 12  # per shipped serving scenario: a second or two each
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
        scenario.policies.placement.name == "contiguous"
        and scenario.policies.cache.name == "none"
        and scenario.cluster.parallel == ParallelSpec()
    )
    if plain and model.num_experts % gpus == 0:
        local = model.total_moe_layers * model.num_experts // gpus
        weights = (model.non_expert_params + local * model.expert_params) * model.dtype_bytes
        assert result.memory.weights_bytes_per_device == [pytest.approx(weights)] * gpus


def test_the_serving_scenarios_are_shipped() -> None:
    names = {p.stem for p in SERVING}
    shipped = {"continuous", "chunked", "static", "trace", "disaggregated"}
    assert {f"serving-{name}" for name in shipped} <= names


@pytest.mark.parametrize("path", SERVING, ids=lambda p: p.stem)
def test_every_shipped_serving_scenario_serves_all_its_requests(path: Path) -> None:
    """A few of the scenario's requests (serving ignores ``steps``): every one completes with
    all its tokens, in order, within the KV cache and the device memory."""
    scenario = load_scenario(path, [f"workload.requests.count={SERVING_REQUESTS}"])
    result, records = run(scenario)
    serving, requests = result.serving, records.serving.requests
    assert serving is not None and records.serving is not None
    done = (serving.arrived, serving.completed, serving.running, serving.waiting)
    assert done == (SERVING_REQUESTS, SERVING_REQUESTS, 0, 0)
    assert np.all(requests.arrival_s <= requests.first_token_s)
    assert np.all(requests.ttft_s <= requests.e2e_s)
    assert np.all(requests.first_token_s <= requests.finish_s)
    assert serving.ttft_s.p99 <= serving.e2e_s.p99
    # no preemption at this load: each prompt token is prefilled once, each later token
    # decoded once and emitted after one inter-token gap
    assert serving.preemptions == 0
    assert records.serving.prefill_tokens.sum() == requests.prompt_tokens.sum()
    assert records.serving.decode_tokens.sum() == (requests.output_tokens - 1).sum()
    assert records.serving.itl_s.size == (requests.output_tokens - 1).sum()
    assert serving.output_tokens_per_s * result.simulated_seconds == pytest.approx(
        requests.output_tokens.sum()
    )
    tokens = records.steps.tokens.sum()
    assert tokens == requests.prompt_tokens.sum() + (requests.output_tokens - 1).sum()
    model = scenario.model
    assert result.tokens.routed == model.moe_layers(scenario.stack()) * tokens * model.top_k
    assert result.tokens.routed == result.tokens.processed  # dynamic gating drops nothing
    # the engine is busy for the steps' latencies; the run also covers the idle gaps
    # (each pool of a disaggregated cluster: both may be busy at once)
    busy = sum(result.time_breakdown_s.values())
    assert busy == pytest.approx(records.steps.latency_s.sum())
    assert busy <= len(scenario.clusters()) * result.simulated_seconds * (1 + 1e-9)
    assert 0 < serving.kv_cache.peak_blocks <= serving.kv_cache.capacity_blocks
    assert serving.max_running <= SERVING_REQUESTS
    assert not result.memory.out_of_memory
    assert max(result.memory.peak_bytes_per_device) <= result.memory.capacity_bytes


def test_the_serving_rate_sweep_expands_to_serving_scenarios() -> None:
    from moesim.sweep import load_sweep

    sweep = load_sweep(ROOT / "scenarios" / "sweeps" / "serving-rate.yaml")
    rates = []
    for point in sweep.points:
        requests = load_scenario(sweep.base, point.overrides).workload.requests
        assert requests is not None and requests.arrival.process == "poisson"
        rates.append(requests.arrival.rate)
    assert len(rates) >= 6 and rates == sorted(set(rates))


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
