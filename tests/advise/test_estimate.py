"""The screen's estimate on cases solved by hand, and the Pareto frontier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.advise.estimate import estimate, expected_max_poisson
from moesim.advise.pareto import frontier
from moesim.advise.screen import ladder
from moesim.advise.traffic import Traffic

A, B, P = 0.01, 1e-4, 0.005  # decode: A + B n seconds for n sequences; a mean prompt adds P
OUTPUT = 10.0


def _timing(groups: int = 1, local: float = 1.0) -> dict:
    return {
        "groups": groups,
        "gpus": groups,
        "decode_batch": [1, 101],
        "decode_s": [A + B, A + 101 * B],
        "decode_kv_bytes": [1.0, 101.0],
        "decode_activation_bytes": [0.0, 0.0],
        "capacity_bytes": 1e12,
        "weights_bytes": 0.0,
        "prefill_mean_s": A + B + P,
        "prefill_lone_s": 0.02,
        "decode_lone_s": 0.009,
        "prefill_local_fraction": local,
    }


TRAFFIC = Traffic(prompt_mean=100.0, output_mean=OUTPUT, prompt_quantile=300)


def test_expected_max_of_poisson_counts() -> None:
    assert expected_max_poisson(2.5, 1) == pytest.approx(2.5)
    assert expected_max_poisson(0.0, 8) == 0.0
    # two counts of mean 1, by the joint distribution
    k = np.arange(60)
    pmf = np.exp(-1.0) / np.array([math.factorial(int(i)) for i in k])
    joint = np.outer(pmf, pmf)
    by_hand = float((np.maximum.outer(k, k) * joint).sum())
    assert expected_max_poisson(1.0, 2) == pytest.approx(by_hand, rel=1e-9)


def test_capacity_under_a_tpot_target_by_hand() -> None:
    # one group: T = A + B r OUTPUT T + P r T, so T = tpot at r = (1 - A / tpot) / (B OUTPUT + P)
    tpot = 0.02
    result = estimate(_timing(), TRAFFIC, 1.0, tpot, 100, 0.9, 0.25)
    assert result.capacity_rps == pytest.approx((1 - A / tpot) / (B * OUTPUT + P), rel=1e-6)
    assert result.binding == "tpot"
    loose = tpot * 1.25
    assert result.relaxed_rps == pytest.approx((1 - A / loose) / (B * OUTPUT + P), rel=1e-6)
    # without targets, the 100 sequences bind: 100 = r OUTPUT A / (1 - r (B OUTPUT + P))
    assert result.ceiling_rps == pytest.approx(100 / (OUTPUT * A + 100 * (B * OUTPUT + P)))
    assert result.floor_misses == ""
    assert (result.floor_tpot_s, result.floor_ttft_s) == (0.009, 0.02)
    assert result.tokens_per_s_per_user == pytest.approx(1 / tpot, rel=1e-5)


def test_a_floor_above_the_loosened_target_cannot_be_met() -> None:
    assert estimate(_timing(), TRAFFIC, 0.0161, None, 100, 0.9, 0.25).floor_misses == ""
    assert estimate(_timing(), TRAFFIC, 0.0159, None, 100, 0.9, 0.25).floor_misses == "ttft"
    assert estimate(_timing(), TRAFFIC, None, 0.007, 100, 0.9, 0.25).floor_misses == "tpot"


def test_the_busiest_group_pays_a_prefill_outside_the_experts() -> None:
    # eight groups: the share outside the experts follows the most prompts any group got
    shared = estimate(_timing(8, local=0.0), TRAFFIC, None, 0.02, 100, 0.9, 0.0)
    local = estimate(_timing(8, local=1.0), TRAFFIC, None, 0.02, 100, 0.9, 0.0)
    assert shared.capacity_rps == pytest.approx(8 * (1 - A / 0.02) / (B * OUTPUT + P), rel=1e-6)
    assert local.capacity_rps < 0.8 * shared.capacity_rps


def test_the_kv_cache_limits_the_sequences() -> None:
    timing = _timing() | {"capacity_bytes": 50.0 / 0.9}  # room for 50 sequences' KV
    result = estimate(timing, TRAFFIC, None, None, 100, 0.9, 0.0)
    assert result.ceiling_rps == pytest.approx(50 / (OUTPUT * A + 50 * (B * OUTPUT + P)))


def test_the_decode_ladder() -> None:
    assert ladder(1) == [1]
    assert ladder(256) == [1, 4, 16, 64, 256]
    assert ladder(500) == [1, 4, 16, 64, 256, 500]


def test_the_pareto_frontier() -> None:
    x, y = np.array([1.0, 2.0, 3.0, 2.5]), np.array([3.0, 2.0, 1.0, 1.5])
    assert frontier(x, y).tolist() == [0, 1, 3, 2]
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])
    assert frontier(x, y).tolist() == [2]
