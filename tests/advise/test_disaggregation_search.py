"""advise with ``disaggregation``: the pools a prefill fraction makes, and a small space
simulated in full against what the search recommends."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from moesim import api
from moesim.advise import advise, load_advise_spec
from moesim.advise import search as search_module
from moesim.advise.capacity import CapacitySettings, search_capacity
from moesim.advise.disaggregation import pool_points, resolve
from moesim.config import load_scenario
from moesim.errors import ConfigError
from moesim.sweep import Point
from tests.advise.conftest import PRICES, write_space

RATE = 3000.0
DURATION_S = 0.01
SEARCH = {
    "cluster.device": ["slow", "fast"],
    "cluster.gpus_per_node": [2],
    "disaggregation": ["none", {"prefill_fraction": [0.5]}],
}


def _point(*params) -> Point:
    return Point(0, tuple(params))


@pytest.mark.parametrize(
    ("nodes", "per_node", "fraction", "prefill", "decode"),
    [
        (1, 4, 0.25, {"nodes": 1, "gpus_per_node": 1}, {"nodes": 1, "gpus_per_node": 3}),
        (2, 8, 0.5, {"nodes": 1}, {"nodes": 1}),
        (4, 2, 0.25, {"nodes": 1}, {"nodes": 3}),
    ],
)
def test_a_prefill_fraction_splits_whole_nodes_or_one_nodes_gpus(
    tmp_path, nodes, per_node, fraction, prefill, decode
) -> None:
    spec = write_space(tmp_path)
    point = _point(
        ("cluster.nodes", nodes),
        ("cluster.gpus_per_node", per_node),
        ("disaggregation", {"prefill_fraction": fraction}),
    )
    pools = dict(resolve(load_advise_spec(spec).base, point).params)["cluster.pools"]
    assert [
        {k: v for k, v in pool.items() if k in ("nodes", "gpus_per_node")} for pool in pools
    ] == [
        {"nodes": 1, **prefill},
        {"nodes": 1, **decode},
    ]
    timed = pool_points(load_advise_spec(spec).base, point)
    gpus = [load_scenario(tmp_path / "base.yaml", p.overrides).cluster.gpus for p in timed]
    assert gpus == [round(fraction * nodes * per_node), round((1 - fraction) * nodes * per_node)]


def test_a_fraction_that_is_not_whole_nodes_is_the_candidates_error(tmp_path) -> None:
    spec = write_space(tmp_path)
    point = _point(("cluster.nodes", 2), ("cluster.gpus_per_node", 8))
    point = _point(*point.params, ("disaggregation", {"prefill_fraction": 0.25}))
    with pytest.raises(ConfigError, match="not a whole number of nodes"):
        resolve(load_advise_spec(spec).base, point)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("disaggregated")
    spec = write_space(folder, search=SEARCH, evaluate={"duration_s": DURATION_S, "runners_up": 1})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_module, "ROUND", 1)
        return spec, advise(spec, folder / "out", workers=1)


def test_every_configuration_simulated_finds_nothing_cheaper_than_the_advice(searched) -> None:
    spec, outcome = searched
    advice = load_advise_spec(spec)
    best = outcome.best
    assert best is not None
    best_cost = PRICES[best.device] * best.gpus * best.simulated["replicas"]
    costs = {}
    for candidate in outcome.search.candidates:
        settings = CapacitySettings(tuple(advice.fixed), DURATION_S, 0.05, RATE, {"x": 1000.0})
        row = search_capacity(settings, str(advice.base), candidate.concrete, "x")
        replicas = row.get("replicas")
        cost = PRICES[candidate.device] * candidate.gpus * replicas if replicas else math.inf
        costs[candidate.point.index] = cost
    assert min(costs.values()) == pytest.approx(best_cost)
    for candidate in outcome.search.candidates:
        if candidate.status in ("screened_out", "cannot_meet_slo"):
            assert costs[candidate.point.index] >= best_cost - 1e-9, candidate.point.params
    # both serving modes were screened from their own pools' steps
    modes = {dict(c.point.params)["disaggregation"] == "none" for c in outcome.search.candidates}
    assert modes == {True, False}
    split = [
        c
        for c in outcome.search.candidates
        if c.concrete and dict(c.point.params)["disaggregation"] != "none"
    ]
    assert split and all(c.decode_timing.get("status") == "ok" for c in split)
    # 1 + 1 GPUs: both pools are the same deployment, timed once and read twice
    assert all(c.decode_timing_id == c.timing_id for c in split)


def test_the_outputs_name_the_mode_and_best_yaml_runs_it(searched) -> None:
    spec, outcome = searched
    out = spec.parent / "out"
    table = pq.read_table(out / "candidates.parquet").to_pylist()
    assert sorted({row["disaggregation"] for row in table}) == ["none", '{"prefill_fraction": 0.5}']
    scenario = load_scenario(out / "best.yaml")
    disaggregated = dict(outcome.best.point.params)["disaggregation"] != "none"
    assert (scenario.cluster.pools is not None) == disaggregated
    result, _ = api.run(scenario)
    assert result.serving.slo_met
    # one configuration of each mode was simulated, whatever the bound said
    assert "## Colocated against disaggregated" in (out / "advice.md").read_text()


def test_the_prefill_pools_rate_batches_prompts_under_the_ttft_target() -> None:
    from moesim.advise.disaggregation import _prefill_rate

    # 2 groups; one prompt a step takes 1 s, five take 3 s: a = 0.5 s, b = 0.5 s a prompt
    timing = {"groups": 2, "prefill_mean_s": 1.0, "prefill_batch": 5, "prefill_full_s": 3.0}
    timing["prefill_lone_s"] = 1.2
    assert _prefill_rate(timing, None) == pytest.approx(2 * 5 / 3.0)  # full steps back to back
    # TTFT 3.2 s: steps of at most (3.2 - 1.2) / 2 + 1 = 2 s, 0.5 / (1 - 0.5 r) = 2 at r = 1.5
    assert _prefill_rate(timing, 3.2) == pytest.approx(2 * 1.5)
    assert _prefill_rate(timing, 1.1) == 0.0  # the percentile prompt alone misses it
    # without a full step measured: one prompt a step
    single = timing | {"prefill_batch": 1, "prefill_full_s": 1.0}
    assert _prefill_rate(single, None) == pytest.approx(2.0)
