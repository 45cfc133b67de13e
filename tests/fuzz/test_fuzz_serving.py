"""Fuzzing serving scenarios (their requests, scheduler and SLO sections) and request traces
against the input contract (``contract.check``): a run serves or is refused in one line.
Examples are derandomised; ``MOESIM_FUZZ_EXAMPLES`` multiplies them for a longer search."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from moesim.cli import main
from moesim.config.serving import MAX_REQUEST_TOKENS, LengthSpec
from moesim.workload.requests import draw_lengths
from tests.fuzz.contract import ROOT, VALUES, check, fuzz_settings, mutated, mutations

REQUESTS = 10


def _base() -> dict:
    """The tiny dynamic scenario (its model inline) serving a few requests on two GPUs."""
    scenario = yaml.safe_load((ROOT / "scenarios/tiny/tiny-dynamic.yaml").read_text())
    scenario["name"] = "tiny-serving"
    scenario["cluster"] = {"nodes": 1, "gpus_per_node": 2, "device": "a100-sxm4-80gb"}
    scenario["workload"] = {
        "phase": "serving",
        "requests": {
            "count": REQUESTS,
            "arrival": {"process": "poisson", "rate": 2000.0},
            "prompt_tokens": {"distribution": "lognormal", "mean": 48, "sigma": 0.5, "max": 96},
            "output_tokens": {"distribution": "uniform", "low": 1, "high": 8},
        },
        "routing": scenario["workload"]["routing"],
    }
    scenario["policies"]["scheduler"] = {
        "name": "chunked",
        "max_sequences": 4,
        "max_batch_tokens": 64,
        "chunk_tokens": 32,
        "block_tokens": 16,
    }
    scenario["slo"] = {"ttft_s": 0.01, "tpot_s": 0.001, "percentile": 90}
    return scenario


BASE = _base()
# the sections of a serving scenario, each fuzzed on its own so that every field is reached
SECTIONS = {
    "requests": ("workload", "requests"),
    "scheduler": ("policies", "scheduler"),
    "slo": ("slo",),
}
# other starting points, so that mutations reach each scheduler, process and length law
VARIANTS = [
    [
        (
            ("policies", "scheduler"),
            {"name": "continuous", "max_sequences": 4, "max_batch_tokens": 256},
        )
    ],
    [(("policies", "scheduler"), {"name": "static", "batch_size": 3, "timeout_s": 0.001})],
    [(("workload", "requests", "arrival"), {"process": "gamma", "rate": 2000.0, "cv": 2.0})],
    [(("workload", "requests", "arrival"), {"process": "offline"})],
    [
        (
            ("workload", "requests", "output_tokens"),
            {"distribution": "lognormal", "mean": 4.0, "sigma": 1.0},
        )
    ],
    [(("workload", "requests", "prompt_tokens"), {"distribution": "fixed", "value": 40})],
]


def _within(base: dict, section: tuple[str, ...]) -> st.SearchStrategy:
    """Mutations of one section of ``base``, their paths from the scenario's root."""
    tree = base
    for key in section:
        tree = tree[key]
    return mutations(tree).map(lambda changes: [((*section, *p), v) for p, v in changes])


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _in_format(header: list[str], row: list[str]) -> list[str]:
    """A row of seconds and token counts as ``header``'s format writes it: Azure's times as
    dates and times, Vidur's with its total tokens."""
    if header[0] == "TIMESTAMP" and row and _is_float(row[0]):
        row = [f"2023-11-16 18:15:{float(row[0]):09.6f}", *row[1:]]
    if len(header) == 4 and len(row) == 3 and all(cell.isdigit() for cell in row[1:]):
        row = [*row, str(int(row[1]) + int(row[2]))]
    return row


def _sandbox(tmp_path_factory, monkeypatch, scenario: dict) -> tuple[Path, Path, Path]:
    sandbox = tmp_path_factory.mktemp("fuzz-serving")
    monkeypatch.chdir(sandbox)
    path = sandbox / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return sandbox, sandbox / "out", path


def _served(stdout: str, out: Path) -> None:
    """What every accepted serving run reports: each request accounted for, times in order."""
    serving = json.loads(stdout)["serving"]
    parts = serving["completed"] + serving["running"] + serving["waiting"]
    assert parts == serving["arrived"]
    assert serving["kv_cache"]["peak_blocks"] <= serving["kv_cache"]["capacity_blocks"]
    if serving["slo_attainment"] is not None:
        assert 0.0 <= serving["slo_attainment"] <= 1.0
    import pyarrow.parquet as pq

    table = pq.read_table(out / "requests.parquet").to_pydict()
    assert len(table["request"]) == serving["arrived"]
    for ttft, e2e in zip(table["ttft_s"], table["e2e_s"], strict=True):
        if not math.isnan(e2e):
            assert 0.0 <= ttft <= e2e


@fuzz_settings(40)
@given(
    section=st.sampled_from(sorted(SECTIONS)),
    data=st.data(),
    variant=st.sampled_from([[], *VARIANTS]),
)
def test_any_serving_scenario_serves_or_is_refused_in_one_line(
    section, data, variant, tmp_path_factory, capsys, monkeypatch
) -> None:
    base = mutated(BASE, variant)
    changes = data.draw(_within(base, SECTIONS[section]))
    sandbox, out, path = _sandbox(tmp_path_factory, monkeypatch, mutated(base, changes))
    status, stdout = check(["run", str(path), "--out", str(out), "--json"], capsys, sandbox, out)
    if status == 0:
        _served(stdout, out)


# A request trace: a header of a supported format (sometimes a broken one), then rows that are
# mostly valid, a few cells replaced by hostile values or dropped.
_HEADERS = st.sampled_from(
    [
        ["arrival_s", "prompt_tokens", "output_tokens"],
        ["arrival_s", "prompt_tokens", "output_tokens"],
        ["arrived_at", "num_prefill_tokens", "num_decode_tokens", "num_total_tokens"],
        ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
        ["arrival_s", "prompt_tokens"],
        ["when", "what"],
    ]
)
_HOSTILE_CELL = st.one_of(
    st.sampled_from(["2023-11-16 18:15:46.68", "-1", "0", "1.5", "nan", "inf", "", "x", "1e400"]),
    VALUES.map(str),
)
_VALID_ROW = st.tuples(
    st.floats(0.0, 0.05).map(repr), st.integers(1, 80).map(str), st.integers(1, 8).map(str)
).map(list)


@st.composite
def _rows(draw) -> list[list[str]]:
    rows = draw(st.lists(_VALID_ROW, min_size=0, max_size=6))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # most traces valid
        if not rows:
            break
        cells = rows[draw(st.integers(0, len(rows) - 1))]
        column = draw(st.integers(0, 2))
        if draw(st.booleans()) and column < len(cells):
            cells[column] = draw(_HOSTILE_CELL)
        else:
            del cells[column:]
    return rows


@fuzz_settings(30)
@given(
    header=_HEADERS,
    rows=_rows(),
    timed=st.booleans(),
    count=st.integers(1, 8),
)
def test_any_request_trace_is_served_or_refused_in_one_line(
    header, rows, timed, count, tmp_path_factory, capsys, monkeypatch
) -> None:
    requests = {
        "count": count,
        "arrival": {"process": "trace"} if timed else {"process": "constant", "rate": 500.0},
        "trace": "requests.csv",
    }
    replay = mutated(BASE, [(("workload", "requests"), requests)])
    sandbox, out, path = _sandbox(tmp_path_factory, monkeypatch, replay)
    with (sandbox / "requests.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(_in_format(header, row) for row in rows)
    status, stdout = check(["run", str(path), "--out", str(out), "--json"], capsys, sandbox, out)
    if status == 0:
        _served(stdout, out)
    converted = sandbox / "converted" / "native.csv"
    converted.parent.mkdir()
    status, _ = check(
        ["trace", "convert-requests", "requests.csv", str(converted)],
        capsys,
        sandbox,
        converted.parent,
    )
    if status == 0:
        assert converted.read_text().startswith("arrival_s,prompt_tokens,output_tokens")


_REQUESTS = ("workload", "requests")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        # found by fuzzing: each was a traceback (an int64 cast of an overflowing draw, an
        # OverflowError or ZeroDivisionError in the gamma shape); now one line on the field
        (
            [
                (
                    (*_REQUESTS, "prompt_tokens"),
                    {"distribution": "lognormal", "mean": 1e30, "sigma": 0.5},
                )
            ],
            "workload.requests.prompt_tokens.mean",
        ),
        (
            [
                (
                    (*_REQUESTS, "output_tokens"),
                    {"distribution": "lognormal", "mean": 4.0, "sigma": 1e300},
                )
            ],
            "workload.requests.output_tokens.sigma",
        ),
        (
            [((*_REQUESTS, "arrival"), {"process": "gamma", "rate": 100.0, "cv": 1e-300})],
            "workload.requests.arrival.cv",
        ),
        (
            [((*_REQUESTS, "arrival"), {"process": "gamma", "rate": 100.0, "cv": 1e300})],
            "workload.requests.arrival.cv",
        ),
        (
            [((*_REQUESTS, "prompt_tokens"), {"distribution": "fixed", "value": 2**62})],
            "workload.requests.prompt_tokens.value",
        ),
    ],
)
def test_lengths_and_processes_past_float64_are_refused_on_their_field(
    changes, field, tmp_path_factory, capsys, monkeypatch
) -> None:
    _, out, path = _sandbox(tmp_path_factory, monkeypatch, mutated(BASE, changes))
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moesim: error: {path}: {field}: ") and err.count("\n") == 1


def test_drawn_lengths_are_clipped_to_the_cap_before_they_become_integers() -> None:
    """Without ``max`` a draw is capped at ``MAX_REQUEST_TOKENS``; the widest lognormal
    allowed stays finite and in range."""
    top = LengthSpec(distribution="lognormal", mean=float(MAX_REQUEST_TOKENS), sigma=0.0)
    assert set(draw_lengths(top, 100, np.random.default_rng(0)).tolist()) == {MAX_REQUEST_TOKENS}
    wide = LengthSpec(distribution="lognormal", mean=float(MAX_REQUEST_TOKENS), sigma=10.0)
    lengths = draw_lengths(wide, 10_000, np.random.default_rng(0))
    assert lengths.min() >= 1 and lengths.max() <= MAX_REQUEST_TOKENS
    capped = LengthSpec(distribution="lognormal", mean=64.0, sigma=3.0, max=100)
    assert draw_lengths(capped, 1000, np.random.default_rng(0)).max() == 100
