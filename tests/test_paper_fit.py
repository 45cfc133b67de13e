"""The seed-paper fit's pieces (``benchmarks/paper_*.py``) by hand: claim errors and counts, the
one-node objective, the coordinate search, the assumptions as scenario fields, sweep splits."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from paper_claims import Claim, count, objective, ratio_claim
from paper_fit import _cell, coordinate_search, moved
from paper_runs import Assumptions, _by_nodes


def _claim(ratios: tuple[float, ...], agree: bool = False, multi_node: bool = False) -> Claim:
    return Claim("c", "p", "m", ratios, agree, multi_node)


def test_ratio_claim_agrees_within_a_quarter_either_way():
    assert ratio_claim("a", 2.0, 2.5).agree  # 1.25
    assert ratio_claim("a", 4.0, 3.0).agree  # 0.75
    assert not ratio_claim("a", 2.0, 2.6).agree  # 1.30
    assert ratio_claim("a", 2.0, 2.6).ratios == (1.3,)
    assert ratio_claim("a", 1.09, 1.71, " s").paper == "1.09 s"


def test_claim_error_is_its_worst_log_ratio():
    assert _claim((2.0, 0.25)).error == pytest.approx(math.log(4))
    assert _claim(()).error is None
    assert _claim((0.0,)).error == math.inf


def test_count_by_node_scope():
    found = [_claim((1,), True), _claim((2,)), _claim((), True, True), _claim((3,), False, True)]
    assert count(found) == (2, 4)
    assert count(found, multi_node=False) == (1, 2)
    assert count(found, multi_node=True) == (1, 2)


def test_objective_is_median_then_mean_of_one_node_errors():
    found = [
        _claim((2.0,)),  # ln 2
        _claim((0.25,)),  # ln 4
        _claim((1.0,)),  # 0
        _claim((), True),  # an ordering: no error
        _claim((100.0,), multi_node=True),  # predicted, not fitted on
    ]
    median, mean = objective(found)
    assert median == pytest.approx(math.log(2))
    assert mean == pytest.approx((math.log(2) + math.log(4)) / 3)
    assert objective(found[:2])[0] == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert objective([]) == (math.inf, math.inf)


def test_coordinate_search_finds_a_separable_minimum_and_keeps_ties():
    calls = []

    def evaluate(a: Assumptions) -> tuple[float, float]:
        calls.append(a)
        return abs(a.lm_tokens - 512) / 256 + abs(a.lm_skew - 0.5) + abs(a.decoder_skew - 0.5), 0.0

    grid = {
        "tokens": (("lm_tokens",), (256, 512, 2048)),
        "skew": (("lm_skew", "decoder_skew"), (0.0, 0.5, 1.0)),
    }
    best, score = coordinate_search(evaluate, Assumptions(), grid)
    assert (best.lm_tokens, best.lm_skew, best.decoder_skew, score) == (512, 0.5, 0.5, (0, 0))
    assert best.encoder_skew == Assumptions().encoder_skew  # not in the grid: left alone
    assert isinstance(best.lm_tokens, int)
    # the start, a sweep that moves both entries (3 + 3), one that confirms (the 2 + 2
    # candidates that are not the current point)
    assert len(calls) == 1 + 3 + 3 + 2 + 2

    flat, _ = coordinate_search(lambda a: (1.0, 1.0), Assumptions(), grid)
    assert flat == Assumptions()


def test_moved_sets_every_named_field():
    a = moved(Assumptions(), ("lm_skew", "encoder_skew", "decoder_skew"), 0.5)
    assert (a.lm_skew, a.encoder_skew, a.decoder_skew) == (0.5, 0.5, 0.5)
    assert moved(a, ("mt_tokens",), 32.0).mt_tokens == 32


def test_assumptions_as_scenario_fields():
    fitted = Assumptions(mt_tokens=32, decoder_skew=0.5, network_gb_per_s=12.5)
    assert fitted.overrides("decoder", 1) == {
        "workload.seq_len": 32,
        "workload.routing.skew": 0.5,
        "workload.routing.locality": 0.9,
    }
    lm = fitted.overrides("lm", 4)
    assert lm["workload.seq_len"] == 1024
    assert lm["workload.routing.locality"] == 0.5
    assert lm["cluster.device.links.network.bandwidth"] == "12.5GB/s"


def test_sweeps_split_by_node_count():
    grid = {"base": "b.yaml", "grid": {"cluster.nodes": [1, 4], "x": [1, 2]}}
    split = _by_nodes(grid)
    assert list(split) == [1, 4]
    assert split[4]["grid"] == {"cluster.nodes": [4], "x": [1, 2]}
    zipped = {"base": "b.yaml", "zip": {"cluster.nodes": [1, 4, 1], "b": [8, 32, 16]}}
    assert _by_nodes(zipped)[1]["zip"] == {"cluster.nodes": [1, 1], "b": [8, 16]}
    assert _by_nodes({"base": "b.yaml", "grid": {"x": [1]}}) == {
        1: {"base": "b.yaml", "grid": {"x": [1]}}
    }


def test_sensitivity_cells():
    rising = [_claim((0.5,)), _claim((1.0,)), _claim((2.0,))]
    assert _cell(rising, (0, 1, 2)) == "0.50–2.00 ↑"
    # several numbers: moesim's at the lowest and the highest value
    pair = [Claim("c", "8 / 64", m, (1.0, 1.0), False, False) for m in ("8 / 64", "16 / 64")]
    assert _cell(pair, (0, 1)) == "8 / 64 → 16 / 64"
    ordering = [_claim((), False), _claim((), True), _claim((), True)]
    assert _cell(ordering, (0, 0.5, 1.5)) == "0.5, 1.5"
    assert _cell([_claim(())] * 2, (0, 1)) == "never"
