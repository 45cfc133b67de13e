"""Requests of a serving run: arrival processes and length laws against their closed forms, the
seeded stream, and one exact line per bad ``workload.requests`` or ``slo``."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from moesim.config import load_scenario
from moesim.errors import ConfigError
from moesim.workload import request_table
from tests.conftest import SCENARIOS, SIMPLE_PROFILE, TINY_MODEL, make_scenario

N = 200_000  # requests in the statistical checks: standard errors of a few tenths of a percent
Z = 5.0  # standard errors allowed


def requests(**changes: Any) -> dict[str, Any]:
    """A serving request section: Poisson at 8/s, fixed prompts of 64, fixed outputs of 16."""
    return {
        "count": 100,
        "arrival": {"process": "poisson", "rate": 8.0},
        "prompt_tokens": {"distribution": "fixed", "value": 64},
        "output_tokens": {"distribution": "fixed", "value": 16},
        **changes,
    }


def table(seed: int = 3, **changes: Any):
    return request_table(
        make_scenario(seed=seed, workload={"phase": "serving", "requests": requests(**changes)})
    )


def test_poisson_gaps_have_mean_one_over_rate_and_variance_its_square() -> None:
    rate = 8.0
    gaps = np.diff(
        table(count=N, arrival={"process": "poisson", "rate": rate}).arrival_s, prepend=0
    )
    mean, var = 1 / rate, 1 / rate**2
    # exponential: fourth central moment 9/rate^4, so Var(sample variance) = 8/(rate^4 N)
    assert abs(gaps.mean() - mean) < Z * math.sqrt(var / N)
    assert abs(gaps.var() - var) < Z * math.sqrt(8 / N) / rate**2
    assert np.all(gaps >= 0)


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_gaps_have_mean_one_over_rate_and_the_given_cv(cv: float) -> None:
    rate = 4.0
    arrival = {"process": "gamma", "rate": rate, "cv": cv}
    gaps = np.diff(table(count=N, arrival=arrival).arrival_s, prepend=0)
    shape, scale = 1 / cv**2, cv**2 / rate
    var = shape * scale**2
    fourth = 3 * shape * (shape + 2) * scale**4  # central moment of a gamma law
    assert var == pytest.approx((cv / rate) ** 2)
    assert abs(gaps.mean() - 1 / rate) < Z * math.sqrt(var / N)
    assert abs(gaps.var() - var) < Z * math.sqrt((fourth - var**2) / N)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_constant_arrivals_are_exactly_i_over_rate_and_offline_all_zero() -> None:
    constant = table(count=50, arrival={"process": "constant", "rate": 3.0})
    assert constant.arrival_s.tolist() == [i / 3.0 for i in range(50)]
    offline = table(count=50, arrival={"process": "offline"})
    assert offline.arrival_s.tolist() == [0.0] * 50
    assert len(offline) == 50


def test_the_table_is_the_seeded_stream_in_order_arrivals_prompts_outputs() -> None:
    got = table(
        seed=11,
        count=1000,
        prompt_tokens={"distribution": "uniform", "low": 5, "high": 9},
        output_tokens={"distribution": "lognormal", "mean": 40.0, "sigma": 0.5},
    )
    rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(4,)))
    arrival = np.cumsum(rng.exponential(1 / 8.0, 1000))
    prompt = rng.integers(5, 10, 1000)
    output = np.rint(rng.lognormal(math.log(40.0) - 0.125, 0.5, 1000)).clip(1)
    assert got.arrival_s.tolist() == arrival.tolist()
    assert got.prompt_tokens.tolist() == prompt.tolist()
    assert got.output_tokens.tolist() == output.astype(int).tolist()
    assert got.arrival_s.dtype == np.float64 and got.prompt_tokens.dtype == np.int64
    assert got.output_tokens.dtype == np.int64


def test_same_seed_same_table_other_seed_other_table() -> None:
    lengths = {"distribution": "lognormal", "mean": 100.0, "sigma": 1.0}
    one, again, other = (table(seed=s, prompt_tokens=lengths) for s in (5, 5, 6))
    for column in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(one, column), getattr(again, column))
    assert not np.array_equal(one.arrival_s, other.arrival_s)
    assert not np.array_equal(one.prompt_tokens, other.prompt_tokens)


def test_lognormal_lengths_have_the_given_mean() -> None:
    mean, sigma = 1024.0, 0.8
    lengths = table(
        count=N, prompt_tokens={"distribution": "lognormal", "mean": mean, "sigma": sigma}
    )
    prompt = lengths.prompt_tokens
    std = mean * math.sqrt(math.exp(sigma**2) - 1)
    assert abs(prompt.mean() - mean) < Z * std / math.sqrt(N) + 0.5  # rounding moves it < 0.5
    assert np.median(prompt) == pytest.approx(mean * math.exp(-(sigma**2) / 2), rel=0.01)


def test_fixed_and_uniform_lengths_take_exactly_their_values() -> None:
    lengths = table(
        count=20_000,
        prompt_tokens={"distribution": "fixed", "value": 77},
        output_tokens={"distribution": "uniform", "low": 3, "high": 7},
    )
    assert set(lengths.prompt_tokens.tolist()) == {77}
    output = lengths.output_tokens
    assert set(output.tolist()) == {3, 4, 5, 6, 7}  # both ends included
    assert abs(output.mean() - 5) < Z * math.sqrt(2 / 20_000)  # variance of 3..7 is 2


def test_caps_clip_draws_to_min_and_max() -> None:
    mean, sigma, low, high = 1000.0, 1.0, 300, 2000
    spec = {"distribution": "lognormal", "mean": mean, "sigma": sigma, "min": low, "max": high}
    prompt = table(count=N, prompt_tokens=spec).prompt_tokens
    assert prompt.min() == low and prompt.max() == high
    mu = math.log(mean) - sigma**2 / 2

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))

    above = 1 - cdf(high - 0.5)  # draws that round to high or more
    below = cdf(low + 0.5)  # draws that round to low or less
    for share, p in (((prompt == high).mean(), above), ((prompt == low).mean(), below)):
        assert abs(share - p) < Z * math.sqrt(p * (1 - p) / N)
    fixed = table(prompt_tokens={"distribution": "fixed", "value": 5000, "max": 4096})
    assert set(fixed.prompt_tokens.tolist()) == {4096}


def test_a_trace_gives_arrivals_and_lengths_or_only_lengths(tmp_path: Path) -> None:
    native = str(SCENARIOS / "requests" / "native.csv")
    timed = table(count=10, trace=native, arrival={"process": "trace"}, **_no_lengths())
    assert timed.arrival_s.tolist() == [0.25 * i for i in range(10)]
    assert timed.prompt_tokens.tolist() == [32 + 16 * (i % 8) for i in range(10)]
    drawn = table(seed=2, count=500, trace=native, **_no_lengths())  # poisson arrivals
    assert len(drawn) == 60  # count caps the rows; the trace has 60
    rng = np.random.default_rng(np.random.SeedSequence(2, spawn_key=(4,)))
    assert drawn.arrival_s.tolist() == np.cumsum(rng.exponential(1 / 8.0, 60)).tolist()
    assert drawn.output_tokens.tolist() == [8 + 4 * (i % 5) for i in range(60)]
    sharegpt = str(SCENARIOS / "requests" / "sharegpt.json")
    offline = table(trace=sharegpt, arrival={"process": "offline"}, **_no_lengths())
    assert offline.arrival_s.tolist() == [0.0] * 60
    with pytest.raises(ConfigError) as error:
        table(trace=sharegpt, arrival={"process": "trace"}, **_no_lengths())
    assert str(error.value) == (
        f"{sharegpt}: no arrival times (ShareGPT-style format): give workload.requests.arrival "
        "a process (poisson, gamma, constant or offline)"
    )


def _no_lengths() -> dict[str, None]:
    return {"prompt_tokens": None, "output_tokens": None}


def test_a_relative_trace_path_is_found_next_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n1.5,7,3\n")
    section = {"count": 5, "arrival": {"process": "trace"}, "trace": "traces/t.csv"}
    path = _write(tmp_path, {"phase": "serving", "requests": section})
    scenario = load_scenario(path)
    assert scenario.workload.requests.trace == str(tmp_path / "traces" / "t.csv")
    got = request_table(scenario)
    assert (got.arrival_s.tolist(), got.prompt_tokens.tolist()) == ([1.5], [7])


def test_a_serving_scenario_validates_without_a_fixed_batch() -> None:
    scenario = make_scenario(
        workload={"phase": "serving", "requests": requests()}, slo={"ttft_s": 2}
    )
    assert scenario.workload.batch_size is None and scenario.workload.seq_len is None
    assert scenario.slo.ttft_s == 2.0 and scenario.slo.tpot_s is None
    assert scenario.slo.percentile == 99.0
    assert scenario.stack() == "decoder"
    # 4 experts x 2 GPUs x top-1 cells: small steps stay token-level, large ones counts
    assert scenario.routing_resolution(64) == "tokens"
    assert scenario.routing_resolution(1 << 20) == "counts"
    with pytest.raises(ValueError, match="pass them explicitly"):
        _ = scenario.workload.tokens_per_step


def _write(tmp_path: Path, workload: dict[str, Any], **top: Any) -> Path:
    data = {
        "name": "s",
        "model": copy.deepcopy(TINY_MODEL),
        "cluster": {"nodes": 1, "gpus_per_node": 2, "device": copy.deepcopy(SIMPLE_PROFILE)},
        "workload": workload,
        **top,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _serving(**changes: Any) -> dict[str, Any]:
    return {"phase": "serving", "requests": requests(**changes)}


LOGNORMAL = {"distribution": "lognormal", "mean": 100.0}
TOO_MANY = (
    "2,000,000 requests; moesim serves at most 1,000,000 in one run: each is a row of "
    "requests.parquet and of the per-request state kept in memory, and a million is hours of "
    "traffic at a busy deployment's rate"
)
TRACE = "arrival.process trace needs a request trace (trace: PATH)"


@pytest.mark.parametrize(
    ("workload", "top", "expected"),
    [
        (
            _serving(arrival={"process": "poisson"}),
            {},
            "workload.requests.arrival.rate: required for process poisson",
        ),
        (
            _serving(arrival={"process": "gamma", "rate": -1.0}),
            {},
            "workload.requests.arrival.rate: Input should be greater than 0",
        ),
        (
            _serving(arrival={"process": "offline", "rate": 2.0}),
            {},
            "workload.requests.arrival.rate: not a parameter of process offline "
            "(it takes no parameters)",
        ),
        (
            _serving(arrival={"process": "poisson", "rate": 2.0, "cv": 3.0}),
            {},
            "workload.requests.arrival: cv applies to process gamma only, not poisson",
        ),
        (
            _serving(arrival={"process": "bursty", "rate": 2.0}),
            {},
            "workload.requests.arrival.process: Input should be 'poisson', 'gamma', 'constant', "
            "'offline' or 'trace'",
        ),
        (
            _serving(prompt_tokens=LOGNORMAL),
            {},
            "workload.requests.prompt_tokens.sigma: required for distribution lognormal",
        ),
        (
            _serving(prompt_tokens={"distribution": "fixed"}),
            {},
            "workload.requests.prompt_tokens.value: required for distribution fixed",
        ),
        (
            _serving(output_tokens={"distribution": "uniform", "low": 5, "high": 4}),
            {},
            "workload.requests.output_tokens.high: 4 is below low (5)",
        ),
        (
            _serving(output_tokens={"distribution": "fixed", "value": 5, "low": 4}),
            {},
            "workload.requests.output_tokens.low: not a parameter of distribution fixed "
            "(it takes value)",
        ),
        (
            _serving(output_tokens={"distribution": "fixed", "value": 5, "min": 4, "max": 3}),
            {},
            "workload.requests.output_tokens: max (3) is below min (4)",
        ),
        (
            _serving(output_tokens=None),
            {},
            "workload.requests.output_tokens: required without a request trace (trace)",
        ),
        (
            _serving(count=0),
            {},
            "workload.requests.count: Input should be greater than or equal to 1",
        ),
        (_serving(count=2_000_000), {}, f"workload.requests.count: {TOO_MANY}"),
        (
            _serving(arrival={"process": "trace"}, prompt_tokens=None, output_tokens=None),
            {},
            f"workload.requests: {TRACE}",
        ),
        (
            _serving(trace="nowhere.csv", output_tokens=None),
            {},
            "workload.requests.trace: no such file: nowhere.csv",
        ),
        ({"phase": "serving"}, {}, "workload.requests: required for phase serving"),
        (
            {"phase": "decode", "batch_size": 2, "seq_len": 8, "requests": requests()},
            {},
            "workload.requests: applies to phase serving only, not decode",
        ),
        ({"phase": "prefill", "seq_len": 8}, {}, "workload.batch_size: required field is missing"),
        ({"phase": "decode", "batch_size": 8}, {}, "workload.seq_len: required field is missing"),
        (_serving(), {"slo": {}}, "slo: give at least one target: ttft_s or tpot_s"),
        (_serving(), {"slo": {"ttft_s": 1.0, "e2e_s": 3.0}}, "slo.e2e_s: unknown key"),
        (_serving(), {"slo": {"tpot_s": 0.0}}, "slo.tpot_s: Input should be greater than 0"),
        (
            _serving(),
            {"slo": {"tpot_s": 0.1, "percentile": 101.0}},
            "slo.percentile: Input should be less than or equal to 100",
        ),
        (
            {"phase": "decode", "batch_size": 2, "seq_len": 8},
            {"slo": {"ttft_s": 1.0}},
            "slo: applies to workload.phase serving only, not decode",
        ),
    ],
)
def test_each_bad_serving_section_is_one_exact_line(
    tmp_path: Path, workload: dict[str, Any], top: dict[str, Any], expected: str
) -> None:
    workload = {k: v for k, v in workload.items() if v is not None}
    if isinstance(workload.get("requests"), dict):
        workload["requests"] = {k: v for k, v in workload["requests"].items() if v is not None}
    path = _write(tmp_path, workload, **top)
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    assert str(error.value) == f"{path}: {expected}"
    assert "\n" not in str(error.value)


def test_a_trace_with_lengths_given_twice_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n")
    path = _write(tmp_path, _serving(trace="t.csv", output_tokens=None))
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    assert str(error.value) == (
        f"{path}: workload.requests.prompt_tokens: the request trace (trace) gives the lengths: "
        "remove one of them"
    )
