"""Trace statistics by hand, and synthetic routing fitted to a trace."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.api import load_scenario, run
from moesim.config import SyntheticRouting
from moesim.workload import SyntheticRouter, routing_chunks, save_trace
from moesim.workload.fit import fit_routing
from moesim.workload.trace_stats import (
    coactivation,
    layer_stats,
    persistence,
    step_counts,
    temporal_locality,
    zipf_exponent,
)


def test_statistics_by_hand():
    # 2 steps of 2 tokens, top-2: step 0 uses {0, 1, 2}, step 1 uses {0, 1, 3}
    ids = np.array([[[0, 1], [0, 2]], [[1, 3], [0, 1]]])
    counts = step_counts(ids, 4)
    assert counts.tolist() == [[2, 1, 1, 0], [1, 2, 0, 1]]
    assert temporal_locality(counts) == pytest.approx(2 / 3)
    # tokens (0,1), (0,2), (1,3), (0,1): pair (0,1) in 2 of 4 tokens
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = 0.5
    expected[0, 2] = expected[2, 0] = expected[1, 3] = expected[3, 1] = 0.25
    assert np.array_equal(coactivation(ids, 4), expected)
    # loads [2,1,1,0] and [1,2,0,1]: centred [1,0,0,-1] and [0,1,-1,0], orthogonal
    assert persistence(counts) == pytest.approx(0.0)
    assert persistence(np.array([[3, 1, 0], [6, 2, 0]])) == pytest.approx(1.0)


def test_zipf_exponent_of_an_exact_power_law_and_of_uniform_load():
    assert zipf_exponent(np.arange(1, 33) ** -1.3 * 1e9) == pytest.approx(1.3)
    assert zipf_exponent(np.full(8, 5)) == pytest.approx(0.0)


def test_top1_coactivation_counts_steps_using_both():
    ids = np.array([[[0], [1]], [[0], [2]], [[1], [1]]])  # steps use {0,1}, {0,2}, {1}
    matrix = coactivation(ids, 3)
    assert matrix[0, 1] == pytest.approx(1 / 3) and matrix[0, 2] == pytest.approx(1 / 3)
    assert matrix[1, 2] == 0.0 and np.all(np.diag(matrix) == 0)


def _generated(skew, locality, steps=300, tokens=64, seed=5):
    router = SyntheticRouter(
        SyntheticRouting(source="synthetic"),
        16,
        2,
        len(skew),
        np.random.default_rng(seed),
        skew_L=np.asarray(skew),
        locality_L=np.asarray(locality),
    )
    return router.draw(steps, tokens)


def test_fit_recovers_the_generators_own_parameters():
    skew, locality = [0.5, 1.0, 1.6], [0.2, 0.5, 0.9]
    fitted_skew, fitted_locality = fit_routing(_generated(skew, locality), 16, 2)
    assert fitted_skew == pytest.approx(skew, abs=0.08)
    assert fitted_locality[1:] == pytest.approx(locality[1:], abs=0.12)


def test_a_scenario_fitted_to_a_trace_shows_the_traces_statistics(tmp_path):
    trace = _generated([0.4, 1.5], [0.0, 0.9], steps=128, tokens=64)
    save_trace(tmp_path / "t.npz", trace, metadata={"num_experts": 16, "top_k": 2})
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(
        "name: fitted\nseed: 1\n"
        "model: {name: m, layers: 2, moe_every: 1, d_model: 16, d_ffn: 32, num_experts: 16,"
        " top_k: 2, heads: 2, vocab_size: 100, dtype: fp16}\n"
        "cluster: {nodes: 1, gpus_per_node: 2, device: a100-sxm4-80gb}\n"
        "workload: {phase: decode, batch_size: 64, seq_len: 8, steps: 128,"
        " routing: {source: synthetic, fit: t.npz}}\n"
    )
    scenario = load_scenario(scenario_file)
    drawn = np.concatenate([c.expert_ids_NLTK for c in routing_chunks(scenario)])
    original, synthetic = layer_stats(trace, 16), layer_stats(drawn, 16)
    for a, b in zip(original, synthetic, strict=True):
        assert b.step_skew == pytest.approx(a.step_skew, abs=0.1)
        assert b.persistence == pytest.approx(a.persistence, abs=0.15)
    assert synthetic[1].persistence > synthetic[0].persistence + 0.5
    result, _ = run(scenario)
    assert result.tokens.routed == 2 * 64 * 2 * 128


@pytest.mark.parametrize(("experts", "top_k", "tokens"), [(8, 2, 1), (64, 1, 4)])
def test_fit_from_tiny_steps_keeps_the_order_of_skews_and_stays_inside(experts, top_k, tokens):
    """With fewer than 4 x E assignments a step, steps are pooled: the fit is approximate but
    orders the layers as their skews and neither collapses to 0 nor hits the bracket."""
    router = SyntheticRouter(
        SyntheticRouting(source="synthetic"),
        experts,
        top_k,
        3,
        np.random.default_rng(5),
        skew_L=np.array([0.5, 1.0, 2.0]),
        locality_L=np.array([0.5, 0.5, 0.5]),
    )
    skew, locality = fit_routing(router.draw(4000, tokens), experts, top_k)
    assert skew[0] < skew[1] < skew[2] < 4.0 and skew[1] > 0.2
    assert np.all((locality > 0) & (locality < 1))
