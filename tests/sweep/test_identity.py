"""A point's identity is everything that determines its result: no stale rows, no rows of
another sweep under this one's parameters."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from moesim.sweep import run_sweep
from tests.conftest import ROOT, SCENARIOS
from tests.sweep.helpers import TINY, copy_base, write_sweep

GRID = {"grid": {"workload.batch_size": [4, 8]}}


def _rows(outcome) -> list[dict]:
    return pq.read_table(outcome.results).to_pylist()


def test_an_unchanged_sweep_runs_nothing_again(tmp_path):
    spec = write_sweep(tmp_path, GRID)
    first = run_sweep(spec, tmp_path / "out", workers=1)
    again = run_sweep(spec, tmp_path / "out", workers=1)
    assert (first.ran, again.ran, again.total) == (2, 0, 2)
    assert _rows(again) == _rows(first)


def test_a_changed_base_reruns_every_point(tmp_path):
    base = copy_base(tmp_path)
    spec = write_sweep(tmp_path, GRID, base=base)
    before = _rows(run_sweep(spec, tmp_path / "out", workers=1))
    copy_base(tmp_path, workload={"seq_len": 512})  # longer contexts: slower decode steps
    outcome = run_sweep(spec, tmp_path / "out", workers=1)
    after = _rows(outcome)
    assert outcome.ran == 2
    assert {r["point_id"] for r in before}.isdisjoint(r["point_id"] for r in after)
    for old, new in zip(before, after, strict=True):
        assert new["latency_s.mean"] > old["latency_s.mean"]


@pytest.mark.parametrize("what", ["model card", "hardware profile"])
def test_a_changed_card_or_profile_reruns_every_point(tmp_path, what):
    scenario = yaml.safe_load(TINY.read_text())
    card, profile = tmp_path / "card.yaml", tmp_path / "profile.yaml"
    card.write_text(yaml.safe_dump(scenario["model"]))
    profile.write_text((ROOT / "hardware_profiles" / "a100-sxm4-80gb.yaml").read_text())
    cluster = scenario["cluster"] | {"device": "profile.yaml"}
    base = copy_base(tmp_path, model="card.yaml", cluster=cluster)
    spec = write_sweep(tmp_path, GRID, base=base)
    before = _rows(run_sweep(spec, tmp_path / "out", workers=1))
    if what == "model card":
        card.write_text(yaml.safe_dump(scenario["model"] | {"d_ffn": 4096}))
    else:
        data = yaml.safe_load(profile.read_text())
        data["compute"]["peak_flops"] = {k: 1e12 for k in data["compute"]["peak_flops"]}
        profile.write_text(yaml.safe_dump(data))
    outcome = run_sweep(spec, tmp_path / "out", workers=1)
    after = _rows(outcome)
    assert outcome.ran == 2
    for old, new in zip(before, after, strict=True):
        assert new["time_breakdown_s.expert"] > old["time_breakdown_s.expert"]


def test_another_moesim_version_reruns_every_point(tmp_path, monkeypatch):
    spec = write_sweep(tmp_path, GRID)
    run_sweep(spec, tmp_path / "out", workers=1)
    monkeypatch.setattr("moesim.sweep.identity.__version__", "99.0.0")
    assert run_sweep(spec, tmp_path / "out", workers=1).ran == 2


def test_a_changed_trace_to_fit_reruns_its_points(tmp_path):
    trace = tmp_path / "trace.npz"
    trace.write_bytes((SCENARIOS / "traces" / "tiny-mixtral-random.npz").read_bytes())
    base = SCENARIOS / "trace-fit-tiny-mixtral.yaml"
    spec = write_sweep(
        tmp_path,
        {"grid": {"workload.steps": [2], "workload.routing.fit": [str(trace)]}},
        base=base,
    )
    assert run_sweep(spec, tmp_path / "out", workers=1).ran == 1
    assert run_sweep(spec, tmp_path / "out", workers=1).ran == 0
    with trace.open("ab") as stream:  # the same arrays, but not the same file
        stream.write(b"\0")
    assert run_sweep(spec, tmp_path / "out", workers=1).ran == 1


def test_a_sweep_of_another_base_in_the_same_out_is_not_mixed_in(tmp_path):
    dynamic = write_sweep(tmp_path, GRID, "dynamic.yaml")
    static = write_sweep(
        tmp_path, GRID, "static.yaml", base=SCENARIOS / "tiny" / "tiny-static.yaml"
    )
    first = _rows(run_sweep(dynamic, tmp_path / "out", workers=1))
    outcome = run_sweep(static, tmp_path / "out", workers=1)
    rows = _rows(outcome)
    assert (outcome.ran, outcome.total) == (2, 2)  # nothing of the dynamic sweep reused
    assert {r["point_id"] for r in rows}.isdisjoint(r["point_id"] for r in first)
    assert all(r["tokens.padded"] > 0 for r in rows)  # static gating pads; dynamic does not
    assert all(r["tokens.padded"] == 0 for r in first)


def test_the_same_simulation_asked_another_way_shares_its_row_under_this_sweeps_columns(
    tmp_path,
):
    """Sweeping the seed of a base whose batch is 8 asks for the batch-8 point of the first
    sweep again: its row is reused, with this sweep's number and parameters."""
    first = _rows(run_sweep(write_sweep(tmp_path, GRID, "a.yaml"), tmp_path / "out", workers=1))
    base = copy_base(tmp_path, workload={"batch_size": 8})
    seeds = write_sweep(tmp_path, {"grid": {"seed": [7, 8]}}, "b.yaml", base=base)
    outcome = run_sweep(seeds, tmp_path / "out", workers=1)
    rows = _rows(outcome)
    assert (outcome.ran, outcome.total) == (1, 2)  # seed 7 is the first sweep's batch-8 point
    assert [r["seed"] for r in rows] == [7, 8] and [r["point"] for r in rows] == [0, 1]
    assert "workload.batch_size" not in rows[0]
    assert rows[0]["throughput_tokens_per_s"] == first[1]["throughput_tokens_per_s"]
    assert rows[0]["point_id"] == first[1]["point_id"]
