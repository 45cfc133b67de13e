"""Bad advise specs: one line naming the file and the field, exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.advise import load_advise_spec
from moesim.cli import main
from tests.advise.conftest import spec_document, write_space


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], **changes) -> str:
    spec = write_space(tmp_path, **changes)
    out = tmp_path / "out"
    assert main(["advise", str(spec), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert not out.exists()
    return lines[0]


def test_an_unknown_field_in_search_names_the_key(tmp_path, capsys) -> None:
    search = {"policies.scheduler.max_sequencs": [4]}
    line = _refused(tmp_path, capsys, search=search)
    assert f"{tmp_path / 'spec.yaml'}: search.policies.scheduler.max_sequencs[0]: " in line
    assert "unknown field" in line


def test_an_unknown_field_inside_a_searched_policy(tmp_path, capsys) -> None:
    search = {"policies.gating": [{"name": "dynamic"}, {"name": "static", "capacity_factr": 1}]}
    line = _refused(tmp_path, capsys, search=search)
    assert "search.policies.gating[1]: unknown field policies.gating.capacity_factr" in line


def test_a_device_without_a_price(tmp_path, capsys) -> None:
    line = _refused(tmp_path, capsys, prices={"slow": 1.0})
    assert line.endswith(
        f"{tmp_path / 'spec.yaml'}: prices.fast: missing: every searched device needs a price "
        "($ per GPU-hour)"
    )


def test_an_slo_on_an_unknown_metric(tmp_path, capsys) -> None:
    line = _refused(tmp_path, capsys, slo={"e2e_s": 1.0})
    assert f"{tmp_path / 'spec.yaml'}: slo.e2e_s: unknown metric" in line


@pytest.mark.parametrize(
    ("search", "field"),
    [({}, "search"), ({"cluster.nodes": []}, "search.cluster.nodes")],
    ids=["no keys", "an empty list"],
)
def test_an_empty_search_space(tmp_path, capsys, search, field) -> None:
    line = _refused(tmp_path, capsys, search=search)
    assert f"{tmp_path / 'spec.yaml'}: {field}: empty" in line


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["none", {"prefill_fraction": [1.5]}], "search.disaggregation[1]: prefill_fraction 1.5"),
        ([{"prefill_share": 0.5}], "search.disaggregation[0]: expected none or"),
        ([], "search.disaggregation: empty list"),
    ],
    ids=["fraction", "key", "empty"],
)
def test_a_disaggregation_that_cannot_be(tmp_path, capsys, values, message) -> None:
    line = _refused(tmp_path, capsys, search={"disaggregation": values})
    assert f"{tmp_path / 'spec.yaml'}: {message}" in line


def test_a_base_with_pools_is_refused(tmp_path, capsys) -> None:
    from tests.advise.conftest import BASE

    spec = write_space(tmp_path)
    pools = [{"role": "prefill", "nodes": 1}, {"role": "decode", "nodes": 1}]
    cluster = {k: v for k, v in BASE["cluster"].items() if k != "nodes"}
    base = {**BASE, "cluster": {**cluster, "pools": pools}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    assert main(["advise", str(spec), "--out", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip()
    assert "base: base.yaml has cluster.pools: give a colocated base and search" in line


def test_pools_are_searched_through_disaggregation(tmp_path, capsys) -> None:
    line = _refused(tmp_path, capsys, search={"cluster.pools": [None]})
    assert "search.cluster.pools: search disaggregation: [none, {prefill_fraction" in line


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"objective": {"rate": 1.0, "maximize": "goodput_per_dollar"}}, "objective"),
        ({"objective": {"maximize": "latency"}}, "objective.maximize"),
        ({"colour": "red"}, "colour"),
        ({"search": {"workload.requests.arrival.rate": [1.0]}}, "search.workload.requests"),
    ],
    ids=["two objectives", "unknown objective", "unknown top-level key", "the traffic"],
)
def test_other_bad_specs_name_their_field(tmp_path, capsys, changes, field) -> None:
    line = _refused(tmp_path, capsys, **changes)
    assert f"{tmp_path / 'spec.yaml'}: {field}" in line


def test_a_good_spec_expands_every_combination_in_order(space) -> None:
    loaded = load_advise_spec(space)
    assert len(loaded.configurations) == 2 * 2 * 2
    assert loaded.configurations[1].params == (
        ("cluster.device", "slow"),
        ("cluster.gpus_per_node", 1),
        ("policies.scheduler.max_sequences", 16),
    )
    assert loaded.scenario.slo.ttft_s == spec_document()["slo"]["ttft_s"]


def test_the_slo_defaults_to_the_base_one(tmp_path) -> None:
    spec = write_space(tmp_path)
    document = yaml.safe_load(spec.read_text())
    del document["slo"]
    spec.write_text(yaml.safe_dump(document))
    with pytest.raises(Exception, match="slo: required"):
        load_advise_spec(spec)


def test_the_shipped_example_spec_is_valid(root) -> None:
    loaded = load_advise_spec(root / "scenarios" / "advise" / "mixtral-colocated.yaml")
    assert len(loaded.configurations) == 16
    assert loaded.spec.objective.rate == 60.0
    assert loaded.scenario.model.name == "mixtral-8x7b"
