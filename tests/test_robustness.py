"""Hostile and odd input (issue 13): names are text, numbers are finite, YAML is strict, sizes
are bounded, and every refusal is one line naming the file and field, exit 2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim.cli import _speed, main
from moesim.cli_list import listed
from moesim.config import CACHE, GATING, PLACEMENT, load_scenario
from moesim.config.scenario import MAX_GPUS, MAX_STEPS
from moesim.config.strict_yaml import MAX_DEPTH, parse_yaml
from moesim.errors import ConfigError, MoesimError
from moesim.files import json_text
from moesim.workload import save_trace
from moesim.workload import trace_stats as stats_module
from moesim.workload.trace_stats import layer_stats
from tests.conftest import ROOT, SCENARIOS, SIMPLE_PROFILE, TINY_MODEL

TINY = SCENARIOS / "tiny" / "tiny-static.yaml"


def _error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0, error
    return error


# ---- finding 3: names are printed as text, never as markup ----------------------------------


def test_names_with_brackets_print_verbatim_and_the_result_is_written(tmp_path, capsys) -> None:
    args = ["--set", "name=ablation [/tmp/run]", "--set", "model.name=qwen[moe]"]
    assert main(["run", str(TINY), *args, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("ablation [/tmp/run]: qwen[moe] on 2x2 a100-sxm4-80gb")
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["scenario"] == "ablation [/tmp/run]"
    assert result["config"]["model"]["name"] == "qwen[moe]"


def test_trace_stats_prints_metadata_as_text(tmp_path, capsys) -> None:
    ids = np.tile(np.array([[0, 1], [2, 3]]), (3, 2, 4, 1)).reshape(3, 2, 8, 2)
    path = save_trace(
        tmp_path / "t[/x].npz", ids, metadata={"model": "qwen[moe] [/bold]", "source": "[red]"}
    )
    assert main(["trace", "stats", str(path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert printed.startswith(
        f"{path}: qwen[moe] [/bold], 3 steps x 8 tokens, 2 MoE layers, 4 experts, top-2 ([red])"
    )


# ---- finding 7: tracebacks on bad input become one line ------------------------------------


def _scenario(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_policy_name_given_as_a_list_is_one_line(tmp_path, capsys) -> None:
    path = _scenario(tmp_path, policies={"gating": {"name": ["static"]}})
    assert main(["run", str(path)]) == 2
    assert _error(capsys) == (
        f"moesim: error: {path}: policies.gating: name: expected one gating policy name "
        "(dynamic, static), got ['static']"
    )


@pytest.mark.parametrize("section", ["policies", "workload"])
def test_a_section_that_is_not_a_mapping_is_one_line(tmp_path, capsys, section) -> None:
    # found by tests/fuzz: `policies: -1` raised AttributeError before validation
    path = _scenario(tmp_path, **{section: -1})
    assert main(["run", str(path)]) == 2
    error = _error(capsys)
    assert error.startswith(f"moesim: error: {path}: {section}: ")
    assert "dictionary" in error or "mapping" in error


@pytest.mark.parametrize("where", ["file", "--set"])
def test_a_missing_fit_file_is_refused_at_load(tmp_path, capsys, where) -> None:
    routing = {"source": "synthetic", "fit": "nope.npz"}
    if where == "file":
        path, args = _scenario(tmp_path, workload={**_workload(), "routing": routing}), []
        expected = f"{path}: workload.routing.fit: no such file: nope.npz"
    else:
        path, args = TINY, ["--set", "workload.routing.fit=nope.npz"]
        expected = "--set workload.routing.fit: no such file: nope.npz"
    assert main(["run", str(path), *args]) == 2
    assert _error(capsys) == f"moesim: error: {expected}"


def _workload() -> dict:
    return yaml.safe_load(TINY.read_text())["workload"]


def test_deeply_nested_yaml_is_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nextra: " + "[" * 2000 + "]" * 2000 + "\n")
    assert main(["run", str(path)]) == 2
    assert _error(capsys) == f"moesim: error: {path}: nested deeper than {MAX_DEPTH} levels"


def test_a_large_compressed_trace_is_refused_before_it_is_inflated(tmp_path, capsys) -> None:
    """The header promises 4 GB; only the header is read."""
    path = tmp_path / "big.npz"
    header = {"descr": "<i4", "fortran_order": False, "shape": (1000, 4, 1000, 250)}
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("expert_ids.npy", "w") as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        member.write(b"\0" * 4096)
    assert main(["trace", "stats", str(path)]) == 2
    assert _error(capsys) == (
        f"moesim: error: {path}: expert_ids: is compressed and would take 4.0 GB in memory "
        "(at most 1.1 GB); save the trace uncompressed (numpy.savez, or moesim trace convert) "
        "so that it is memory-mapped"
    )


def test_trace_stats_read_in_blocks_equal_the_whole(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((9, 2, 16, 6)), axis=-1)[..., :2]  # distinct top-2 of 6
    ids1 = ids[..., :1]
    whole = [layer_stats(ids, 6), layer_stats(ids1, 6)]
    monkeypatch.setattr(stats_module, "BLOCK_ASSIGNMENTS", 40)  # a step or two at a time
    assert [layer_stats(ids, 6), layer_stats(ids1, 6)] == whole


def test_fitting_a_missing_trace_is_a_config_error(tmp_path) -> None:
    from moesim.workload.fit import fit_trace

    with pytest.raises(ConfigError) as raised:
        fit_trace(tmp_path / "gone.npz", 8, 2, 2)
    assert str(raised.value) == f"{tmp_path / 'gone.npz'}: cannot read: No such file or directory"


# ---- finding 8: every accepted size has a limit or a cost ----------------------------------


def test_steps_beyond_the_limit_are_refused_saying_why(capsys) -> None:
    assert main(["run", str(TINY), "--set", f"workload.steps={MAX_STEPS + 1}"]) == 2
    assert _error(capsys) == (
        "moesim: error: --set workload.steps: 100,001 steps; moesim runs at most 100,000: each "
        "step is a row of result.json (about 115 bytes) and costs 0.1-3 ms of wall time, and a "
        "fixed batch's metrics settle in far fewer steps"
    )


def test_the_largest_cluster_moesim_accepts_runs(capsys) -> None:
    """8192 GPUs (MAX_GPUS), DeepSeek-V3 decoding: one step, every GPU accounted for."""
    nodes = MAX_GPUS // 8
    overrides = ["--set", f"cluster.nodes={nodes}", "--set", "workload.steps=1", "--json"]
    assert main(["run", str(SCENARIOS / "deepseek-v3-64gpu.yaml"), *overrides]) == 0
    result = json.loads(capsys.readouterr().out)
    scenario = load_scenario(SCENARIOS / "deepseek-v3-64gpu.yaml", overrides[1:4:2])
    assert len(result["memory"]["peak_bytes_per_device"]) == MAX_GPUS
    tokens = result["tokens"]
    expected = (
        scenario.workload.batch_size * scenario.model.top_k * scenario.model.moe_layers("decoder")
    )
    assert tokens["routed"] == expected == tokens["processed"] + tokens["dropped"]


# ---- finding 10: accepted nonsense is refused ----------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "cluster.device.memory.capacity=1e400GB",
        "cluster.device.memory.bandwidth=.inf",
        "cluster.device.compute.peak_flops.fp16=.inf",
        "cluster.device.links.nvlink.latency=.nan",
        "workload.routing.skew=.inf",
    ],
)
def test_non_finite_figures_are_refused(tmp_path, capsys, override) -> None:
    assert main(["run", str(TINY), "--set", override, "--out", str(tmp_path)]) == 2
    field = override.partition("=")[0]
    assert _error(capsys) == f"moesim: error: --set {field}: Input should be a finite number"
    assert not (tmp_path / "result.json").exists()


def test_json_is_standard_or_refused_naming_the_field() -> None:
    assert json_text({"a": [1.5, 2]}, "x", indent=None) == '{"a": [1.5, 2]}'
    with pytest.raises(MoesimError) as raised:
        json_text({"a": {"b": [1.0, float("nan")]}}, "result.json")
    assert str(raised.value) == (
        "result.json: a.b.1 is not a finite number; JSON cannot hold it (refusing to write "
        "non-standard JSON)"
    )


def test_more_heads_than_d_model_is_refused(capsys) -> None:
    assert main(["run", str(TINY), "--set", "model.heads=65"]) == 2
    assert _error(capsys).endswith(
        "model: heads = 65 exceeds d_model = 64: a head would have d_model // heads = 0 "
        "dimensions (give head_dim, or fewer heads)"
    )
    load_scenario(TINY, ["model.heads=65", "model.head_dim=16"])  # an explicit head_dim is fine


def test_an_override_through_a_string_field_is_refused(capsys) -> None:
    assert main(["run", str(TINY), "--set", "name.foo=1"]) == 2
    assert _error(capsys) == (
        "moesim: error: --set name.foo: name is a string, not a mapping with fields"
    )


def _with_duplicate(text: str, key: str) -> str:
    """``text`` with its top-level ``key`` line repeated at the end."""
    line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
    return text + line + "\n"


@pytest.mark.parametrize("kind", ["scenario", "card", "profile"])
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, capsys, kind) -> None:
    card = tmp_path / "models" / "dup.yaml"
    profile = tmp_path / "hardware_profiles" / "dup.yaml"
    card.parent.mkdir()
    profile.parent.mkdir()
    card.write_text(yaml.safe_dump(TINY_MODEL, sort_keys=False))
    profile.write_text(yaml.safe_dump(SIMPLE_PROFILE, sort_keys=False))
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: dup\nmodel: dup\ncluster: {nodes: 1, gpus_per_node: 1, device: dup}\n"
        "workload: {batch_size: 4, seq_len: 8, steps: 2}\n"
    )
    target = {"scenario": scenario, "card": card, "profile": profile}[kind]
    key = "name"
    text = target.read_text()
    first = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("name:")))
    target.write_text(_with_duplicate(text, key))
    last = len(target.read_text().splitlines())
    assert main(["run", str(scenario)]) == 2
    assert _error(capsys) == (
        f"moesim: error: {target}: line {last}, column 1: duplicate key 'name' "
        f"(first on line {first + 1})"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: {b: 1, b: 2}", "line 1, column 11: duplicate key 'b' (first on line 1)"),
        ("a: &x [*x]", "an alias refers to a value that contains it (a recursive alias)"),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(
                f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
                for a, b in zip("abcde", "bcdef", strict=True)
            ),
            "expands to more than 1,000,000 values (aliases repeat what they name; write the "
            "document out, or make it smaller)",
        ),
    ],
)
def test_strict_yaml_refusals(text, message) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_yaml(text, "f.yaml")
    assert str(raised.value) == f"f.yaml: {message}"


def test_merge_keys_may_be_overridden() -> None:
    text = "base: &b {x: 1, y: 2}\npoint:\n  <<: *b\n  x: 3\n"
    assert parse_yaml(text, None) == {"base": {"x": 1, "y": 2}, "point": {"x": 3, "y": 2}}


# ---- finding 6 (run): an unwritable --out fails before the simulation ----------------------


def test_run_into_an_unwritable_out_fails_before_simulating(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(TINY), "--out", str(blocker / "sub")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no summary: nothing ran
    assert captured.err.strip() == (
        f"moesim: error: --out: cannot write into {blocker / 'sub'}: Not a directory"
    )


# ---- low: version, listings, stale outputs, speed ------------------------------------------


def test_version_and_listings(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == "moesim 0.1.0\n"
    shipped = {p.stem for p in (SCENARIOS / "models").glob("*.yaml")}
    assert set(listed("models")) == shipped
    assert listed("profiles") == sorted(p.stem for p in (ROOT / "hardware_profiles").glob("*.yaml"))
    expected = [f"{r.family} {n}" for r in (GATING, PLACEMENT, CACHE) for n in r.names()]
    assert main(["list", "policies"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert "gating dynamic" in expected and "cache belady" in expected


def test_a_rerun_without_chrome_trace_removes_the_old_trace(tmp_path, capsys) -> None:
    assert main(["run", str(TINY), "--out", str(tmp_path), "--chrome-trace"]) == 0
    assert (tmp_path / "trace.json").is_file()
    assert main(["run", str(TINY), "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "trace.json").exists()
    assert "trace.json" not in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    ("simulated", "wall", "shown"),
    [
        (0.003, 0.03, "0.1x real time"),
        (0.0123456, 1.0, "0.0123x real time"),
        (12.345, 1.0, "12.3x real time"),
        (123456.0, 1.0, "123,456x real time"),
        (1.0, 0.0, "no wall time measured"),
    ],
)
def test_speed_has_three_significant_digits(simulated, wall, shown) -> None:
    assert _speed(simulated, wall) == shown


def test_readme_calibrate_and_validate_examples_write_under_runs() -> None:
    """Copying the README's commands never overwrites a tracked file."""
    lines = [
        line.split()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith(("moesim calibrate", "moesim validate"))
    ]
    assert len(lines) >= 2
    for words in lines:
        assert words[words.index("--out") + 1].startswith("runs/"), words
