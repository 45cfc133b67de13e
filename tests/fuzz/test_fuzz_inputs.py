"""Fuzzing scenarios, hardware profiles, model cards, YAML text, traces and sweeps against the
input contract (``contract.check``). Examples are derandomised, so CI sees the same inputs
every run; ``MOESIM_FUZZ_EXAMPLES`` multiplies them for a longer search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.contract import (
    ROOT,
    VALUES,
    check,
    fuzz_settings,
    mutated,
    mutations,
    paths,
    plausible,
    value_at,
)


def _base() -> dict:
    """The tiny dynamic scenario with its card and hardware profile inline, so that the
    mutations reach every field of all three."""
    scenario = yaml.safe_load((ROOT / "scenarios/tiny/tiny-dynamic.yaml").read_text())
    profile = yaml.safe_load((ROOT / "hardware_profiles/a100-sxm4-80gb.yaml").read_text())
    scenario["cluster"]["device"] = profile
    scenario["workload"]["steps"] = 3
    scenario["policies"]["cache"] = {"name": "lru", "slots_per_layer": 3}
    return scenario


BASE = _base()


def _sandbox(tmp_path_factory, monkeypatch, scenario: dict) -> tuple[Path, Path, Path]:
    """A fresh folder to work in, its ``out`` folder, and ``scenario`` written into it."""
    sandbox = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(sandbox)
    path = sandbox / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return sandbox, sandbox / "out", path


@fuzz_settings(200)
@given(changes=mutations(BASE))
def test_any_scenario_profile_or_card_runs_or_is_refused_in_one_line(
    changes, tmp_path_factory, capsys, monkeypatch
) -> None:
    sandbox, out, path = _sandbox(tmp_path_factory, monkeypatch, mutated(BASE, changes))
    status, stdout = check(["run", str(path), "--out", str(out), "--json"], capsys, sandbox, out)
    if status == 0:
        result = json.loads(stdout)
        assert (
            result["tokens"]["routed"]
            == result["tokens"]["processed"] + result["tokens"]["dropped"]
        )
        assert (out / "result.json").exists()


_TEXT = yaml.safe_dump(BASE, sort_keys=False)
_EDITS = st.sampled_from(
    [
        "\nname: twice\n",  # a duplicate key
        "\n  - [\n",
        "\t",
        ": :",
        "&a [*a]",
        "\nworkload: *nothing\n",
        "\n" + "[" * 200,
        "\x00",
        "'",
        "{",
        "\nx: " + "[" * 5000 + "]" * 5000 + "\n",
    ]
)


@fuzz_settings(60)
@given(
    edit=st.one_of(_EDITS, st.text(max_size=20)),
    at=st.integers(0, len(_TEXT)),
    cut=st.booleans(),
)
def test_any_yaml_text_runs_or_is_refused_in_one_line(
    edit, at, cut, tmp_path_factory, capsys, monkeypatch
) -> None:
    sandbox, out, path = _sandbox(tmp_path_factory, monkeypatch, BASE)
    text = _TEXT[:at] + edit + ("" if cut else _TEXT[at:])
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(["run", str(path), "--out", str(out)], capsys, sandbox, out)


_ID_DTYPES = st.sampled_from(["int8", "int16", "int64", "uint8", "float32", "bool"])


# the tiny model's shape: 2 MoE layers, top-2 of 8 experts; steps and tokens vary
_FITTING = st.tuples(st.integers(1, 4), st.just(2), st.integers(1, 64), st.just(2)).map(list)


@fuzz_settings(60)
@given(
    shape=st.one_of(_FITTING, st.lists(st.integers(0, 5), min_size=1, max_size=5)),
    dtype=st.one_of(st.just("int16"), _ID_DTYPES),
    high=st.one_of(st.just(8), st.integers(-3, 40)),
    metadata=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["num_experts", "top_k", "model", "phase", "layers"]), VALUES
        ),
    ),
    with_weights=st.booleans(),
)
def test_any_trace_is_read_or_refused_in_one_line(
    shape, dtype, high, metadata, with_weights, tmp_path_factory, capsys, monkeypatch
) -> None:
    replay = mutated(BASE, [(("workload", "routing"), {"source": "trace", "path": "trace.npz"})])
    sandbox, out, path = _sandbox(tmp_path_factory, monkeypatch, replay)
    rng = np.random.default_rng(0)
    ids = rng.integers(min(high, 0), max(high, 1), size=shape).astype(dtype)
    if len(shape) == 4 and 0 < shape[-1] <= high and dtype == "int16":  # distinct top-k
        ids = np.argsort(rng.random((*shape[:-1], high)), axis=-1)[..., : shape[-1]]
        ids = ids.astype(dtype)
    arrays = {"expert_ids": ids}
    if with_weights:
        arrays["gate_weights"] = rng.random(shape).astype(np.float32)
    if metadata is not None:
        arrays["metadata"] = np.array(json.dumps(metadata, default=str))
    trace = sandbox / "trace.npz"
    np.savez(trace, **arrays)
    check(["trace", "stats", str(trace), "--json"], capsys, sandbox, None)
    check(["run", str(path), "--out", str(out), "--json"], capsys, sandbox, out)


_SWEEP = {
    "base": "scenario.yaml",
    "grid": {"workload.batch_size": [4, 8]},
    "random": {"n": 2, "seed": 0, "params": {"workload.routing.skew": {"uniform": [0.0, 2.0]}}},
}


@fuzz_settings(25)
@given(changes=mutations(_SWEEP, most=2))
def test_any_sweep_runs_or_is_refused_in_one_line(
    changes, tmp_path_factory, capsys, monkeypatch
) -> None:
    sandbox, out, _ = _sandbox(tmp_path_factory, monkeypatch, BASE)
    spec = sandbox / "sweep.yaml"
    spec.write_text(yaml.safe_dump(mutated(_SWEEP, changes)))
    status, _ = check(
        ["sweep", str(spec), "--out", str(out), "--workers", "1"], capsys, sandbox, out
    )
    assert status in (0, 1, 2)


def _dump(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


_NEARBY_SET = st.sampled_from(paths(BASE)).flatmap(
    lambda p: st.tuples(st.just(".".join(map(str, p))), plausible(value_at(BASE, p)).map(_dump))
)
_HOSTILE_SET = st.tuples(
    st.one_of(
        st.sampled_from([".".join(map(str, p)) for p in paths(BASE)]),
        st.text(alphabet="abc._[]0", max_size=8),
    ),
    st.one_of(VALUES.map(_dump), st.text(max_size=10)),
)


@fuzz_settings(60)
@given(sets=st.lists(st.one_of(_NEARBY_SET, _NEARBY_SET, _HOSTILE_SET), min_size=1, max_size=3))
def test_any_override_runs_or_is_refused_in_one_line(
    sets, tmp_path_factory, capsys, monkeypatch
) -> None:
    sandbox, out, path = _sandbox(tmp_path_factory, monkeypatch, BASE)
    argv = ["run", str(path), "--out", str(out), "--json"]
    for key, value in sets:
        argv += ["--set", f"{key}={value}"]
    check(argv, capsys, sandbox, out)
