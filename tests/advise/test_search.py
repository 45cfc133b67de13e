"""Trust in the advice: the recommended scenario meets the SLO when run, a brute-force grid
finds nothing cheaper, the screen drops nothing that would have won, and a rerun repeats
nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from moesim import api
from moesim.advise import advise, load_advise_spec
from moesim.advise import search as search_module
from moesim.advise.capacity import CapacitySettings, rate_overrides, search_capacity
from moesim.advise.spec import point_overrides
from moesim.cli import main
from moesim.config import load_scenario
from tests.advise.conftest import PRICES, SLO, write_space

RATE = 3000.0
DURATION_S = 0.01


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("space")
    spec = write_space(folder, evaluate={"duration_s": DURATION_S, "runners_up": 1})
    with pytest.MonkeyPatch.context() as patch:  # rounds of two: the screen prunes here
        patch.setattr(search_module, "ROUND", 1)
        return spec, advise(spec, folder / "out", workers=1)


def _cost(device: str, gpus: int, replicas: int) -> float:
    return PRICES[device] * gpus * replicas


def _meets(spec: Path, overrides: list[str], rate: float) -> bool:
    advice = load_advise_spec(spec)
    scenario = load_scenario(
        advice.base, advice.fixed + overrides + rate_overrides(rate, DURATION_S)
    )
    result, _ = api.run(scenario)
    return bool(result.serving.slo_met)


def test_the_recommended_scenario_meets_the_slo_at_the_target_rate(searched) -> None:
    spec, outcome = searched
    best = outcome.best
    assert best is not None
    path = spec.parent / "out" / "best.yaml"
    scenario = load_scenario(path)
    result, _ = api.run(scenario)
    assert result.serving.slo_met
    assert scenario.slo.model_dump() == {**SLO, "percentile": 99.0}
    replicas = best.simulated["replicas"]
    assert scenario.workload.requests.arrival.rate * replicas == pytest.approx(RATE)
    # it is the very candidate that was simulated: same deployment, same traffic
    advice = load_advise_spec(spec)
    rate = scenario.workload.requests.arrival.rate
    expected = load_scenario(
        advice.base, advice.fixed + point_overrides(best.point) + rate_overrides(rate, DURATION_S)
    )
    assert scenario.model_dump(exclude={"name"}) == expected.model_dump(exclude={"name"})
    # and moesim run says so too
    assert main(["run", str(path), "--json"]) == 0


def test_a_brute_force_grid_finds_nothing_cheaper(searched) -> None:
    spec, outcome = searched
    best = outcome.best
    best_cost = _cost(best.device, best.gpus, best.simulated["replicas"])
    for candidate in outcome.search.candidates:
        device, gpus = candidate.device, candidate.gpus
        replicas = 1
        while _cost(device, gpus, replicas) < best_cost - 1e-9:
            assert not _meets(spec, point_overrides(candidate.point), RATE / replicas), (
                candidate.point.params,
                replicas,
            )
            replicas += 1


def test_the_screen_drops_nothing_that_would_have_won(searched) -> None:
    spec, outcome = searched
    best = outcome.best
    best_cost = _cost(best.device, best.gpus, best.simulated["replicas"])
    advice = load_advise_spec(spec)
    costs = {}
    for candidate in outcome.search.candidates:  # simulate every one, from a neutral start
        settings = CapacitySettings(tuple(advice.fixed), DURATION_S, 0.05, RATE, {"x": 1000.0})
        row = search_capacity(settings, str(advice.base), candidate.point, "x")
        replicas = row.get("replicas")
        costs[candidate.point.index] = (
            math.inf if not replicas else _cost(candidate.device, candidate.gpus, replicas)
        )
    assert min(costs.values()) == pytest.approx(best_cost)
    dropped = [
        c for c in outcome.search.candidates if c.status in ("screened_out", "cannot_meet_slo")
    ]
    assert dropped  # the screen did remove some here
    for candidate in dropped:
        assert costs[candidate.point.index] >= best_cost - 1e-9, candidate.point.params


def test_candidates_parquet_has_every_configuration(searched) -> None:
    spec, outcome = searched
    rows = pq.read_table(spec.parent / "out" / "candidates.parquet").to_pylist()
    assert [row["candidate"] for row in rows] == list(range(8))
    by_status = {row["status"] for row in rows}
    assert by_status <= {"ok", "screened_out", "cannot_meet_slo", "misses_slo"}
    best = next(row for row in rows if row["rank"] == 1)
    assert best["cost_per_hour"] == pytest.approx(
        PRICES[best["device"]] * best["gpus"] * best["replicas"]
    )
    # cost per million output tokens: dollars an hour over the tokens served in an hour
    traffic = outcome.search.traffic
    per_million = best["cost_per_hour"] / (RATE * traffic.output_mean * 3600) * 1e6
    assert best["cost_per_million_output_tokens"] == pytest.approx(per_million)
    assert best["ttft_p99_s"] <= SLO["ttft_s"] or best["ttft_p99_s"] is None
    assert best["replicas"] == math.ceil(RATE / best["capacity_rps"] - 1e-9) or best["replicas"] > 0


def test_a_rerun_repeats_nothing(searched, monkeypatch) -> None:
    spec, _ = searched
    out = spec.parent / "out"
    before = (out / "advice.md").read_text()
    table = pq.read_table(out / "candidates.parquet")

    def fail(*args, **kwargs):
        raise AssertionError("ran again")

    monkeypatch.setattr(search_module, "time_steps", fail)
    monkeypatch.setattr(search_module, "search_capacity", fail)
    monkeypatch.setattr(search_module, "ROUND", 1)
    again = advise(spec, out, workers=1)
    assert (again.search.screened_now, again.search.simulated_now) == (0, 0)
    assert (out / "advice.md").read_text() == before
    assert pq.read_table(out / "candidates.parquet").equals(table)


def test_a_lost_evaluation_runs_again_alone(searched) -> None:
    spec, outcome = searched
    out = spec.parent / "out"
    parts = sorted((out / "capacity" / "parts").glob("*.parquet"))
    parts[0].unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_module, "ROUND", 1)
        again = advise(spec, out, workers=1)
    assert (again.search.screened_now, again.search.simulated_now) == (0, 1)
    assert again.best.point == outcome.best.point


def test_pareto_png_is_written(searched) -> None:
    spec, _ = searched
    assert (spec.parent / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_when_nothing_meets_the_targets_the_advice_says_which_binds(tmp_path, capsys) -> None:
    slo = {"ttft_s": 1.0, "tpot_s": 1e-7, "percentile": 99}
    spec = write_space(
        tmp_path,
        slo=slo,
        search={"cluster.device": ["fast"], "cluster.gpus_per_node": [1]},
        evaluate={"duration_s": DURATION_S},
    )
    out = tmp_path / "out"
    assert main(["advise", str(spec), "--out", str(out), "--workers", "1"]) == 1
    text = (out / "advice.md").read_text()
    assert "## Nothing meets the targets" in text
    assert "TPOT binds" in text
    assert not (out / "best.yaml").exists()
    row = pq.read_table(out / "candidates.parquet").to_pylist()[0]
    assert row["status"] == "cannot_meet_slo"
    # the floor: one sequence decoding alone, against the target
    lone = load_scenario(
        spec.parent / "base.yaml",
        [
            "cluster.device=fast",
            "workload.phase=decode",
            "workload.requests=null",
            "workload.batch_size=1",
            f"workload.seq_len={json.loads(json.dumps(round(55.0 + 8 / 2)))}",
            "workload.steps=1",
        ],
    )
    floor = api.run(lone)[0].latency_s.mean
    ratio = floor / slo["tpot_s"]
    assert f"{ratio:.2f}x the target" in text


def test_configurations_serving_refuses_are_unsupported_but_screened(tmp_path) -> None:
    search = {
        "cluster.gpus_per_node": [2],
        "policies.cache": [{"name": "none"}, {"name": "lru", "slots_per_layer": 1}],
        "cluster.device.memory.capacity": ["1GB", "10KB"],
    }
    spec = write_space(tmp_path, search=search, evaluate={"duration_s": DURATION_S})
    outcome = advise(spec, tmp_path / "out", workers=1)
    rows = pq.read_table(tmp_path / "out" / "candidates.parquet").to_pylist()
    statuses = [row["status"] for row in rows]
    assert statuses == ["ok", "out_of_memory", "unsupported", "out_of_memory"]
    assert rows[2]["reason"] == "expert buffering is not simulated in serving yet (serving)"
    assert rows[2]["estimated_capacity_rps"] > 0  # the screen still estimates it
    assert rows[1]["reason"].startswith("out of memory: GPU 0 holds")
    assert outcome.best.point.index == 0
    assert np.isfinite(rows[0]["capacity_rps"])


def test_maximize_goodput_per_dollar_ranks_by_requests_per_dollar(tmp_path) -> None:
    spec = write_space(
        tmp_path,
        objective={"maximize": "goodput_per_dollar"},
        search={"cluster.device": ["slow", "fast"], "cluster.gpus_per_node": [2]},
        evaluate={"duration_s": DURATION_S, "runners_up": 1},
    )
    outcome = advise(spec, tmp_path / "out", workers=1)
    rows = pq.read_table(tmp_path / "out" / "candidates.parquet").to_pylist()
    simulated = [row for row in rows if row["status"] == "ok"]
    for row in simulated:
        per_dollar = row["capacity_rps"] * 3600 / (PRICES[row["device"]] * row["gpus"])
        assert row["goodput_per_dollar"] == pytest.approx(per_dollar)
        assert row["replicas"] == 1 and row["rate_per_replica_rps"] == row["capacity_rps"]
    best = max(simulated, key=lambda row: row["goodput_per_dollar"])
    assert best["rank"] == 1 and outcome.best.point.index == best["candidate"]
    scenario = load_scenario(tmp_path / "out" / "best.yaml")
    assert scenario.workload.requests.arrival.rate == pytest.approx(best["capacity_rps"])
