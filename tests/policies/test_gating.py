"""Gating policies: capacity formulas, which tokens drop, and conservation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.config import GATING
from moesim.policies import DynamicGating, StaticGating, static_capacity


def _static(**params) -> StaticGating:
    return GATING.build(GATING.validate({"name": "static", **params}))


@pytest.mark.parametrize(
    ("formula", "factor", "minimum", "tokens", "experts", "top_k", "expected"),
    [
        # gshard: max(min, ceil(cf * k * S / E))
        ("gshard", 1.0, 4, 1000, 64, 2, 32),  # ceil(31.25)
        ("gshard", 1.25, 4, 1000, 64, 2, 40),  # ceil(39.06)
        ("gshard", 1.0, 4, 8, 64, 2, 4),  # min capacity
        # tutel: k * floor(cf * ceil(S / E))
        ("tutel", 1.0, 4, 1000, 64, 2, 32),  # 2 * floor(16)
        ("tutel", 1.5, 4, 100, 8, 2, 38),  # 2 * floor(1.5 * ceil(100 / 8)) = 2 * 19
        # fairseq: max(min, ceil(cf * S)), cf a fraction of the local tokens
        ("fairseq", 0.05, 4, 2048, 512, 2, 103),  # ceil(102.4)
        ("fairseq", 1.0, 4, 96, 128, 2, 96),
        ("fairseq", 0.05, 4, 40, 512, 2, 4),  # min capacity
    ],
)
def test_capacity_formulas(formula, factor, minimum, tokens, experts, top_k, expected) -> None:
    got = static_capacity(formula, factor, minimum, np.array([tokens]), experts, top_k)
    assert got.tolist() == [expected]


def test_paper_waste_factors() -> None:
    # SEED-PAPER §2: slots computed / assignments needed = cf * E / k = 12.8 (LM), 64 (MT).
    for cf, experts, waste in ((0.05, 512, 12.8), (1.0, 128, 64.0)):
        tokens = 20480
        capacity = static_capacity("fairseq", cf, 0, np.array([tokens]), experts, 2)[0]
        assert capacity * experts / (2 * tokens) == pytest.approx(waste, rel=1e-3)


def test_first_choices_take_slots_before_second_choices() -> None:
    # One GPU, 3 tokens, E = 2; gshard ceil(0.1 * 2 * 3 / 2) = 1 < min_capacity, so C = 2.
    ids = np.array([[[[1, 0], [1, 0], [0, 1]]]])  # [N=1, L=1, T=3, K=2]
    gating = _static(capacity_factor=0.1, min_capacity=2)
    kept = gating.kept(ids, np.zeros(3, dtype=int), 1, 2)
    # expert 1: first choices of tokens 0, 1 take both slots; token 2's second choice drops.
    # expert 0: first choice of token 2, then token 0's second choice; token 1's drops.
    assert kept[0, 0].tolist() == [[True, True], [True, False], [True, False]]
    outcome = gating.gate(ids, np.zeros(3, dtype=int), 1, 2)
    assert outcome.tokens_NLE[0, 0].tolist() == [2, 2]
    assert outcome.slots_NLE[0, 0].tolist() == [2, 2]


def test_capacity_is_per_source_gpu() -> None:
    # Two GPUs with 2 tokens each, all to expert 0; C = 1 per source: one kept on each GPU.
    ids = np.zeros((1, 1, 4, 1), dtype=int)
    source = np.array([0, 0, 1, 1])
    gating = _static(capacity_factor=0.1, min_capacity=1)
    assert gating.kept(ids, source, 2, 2)[0, 0, :, 0].tolist() == [True, False, True, False]
    outcome = gating.gate(ids, source, 2, 2)
    assert outcome.tokens_NLE[0, 0].tolist() == [2, 0]
    assert outcome.slots_NLE[0, 0].tolist() == [2, 2]  # one slot from each source, padded


routing = st.integers(1, 4).flatmap(
    lambda experts: st.tuples(
        st.just(experts),
        st.integers(1, experts),
        st.integers(1, 3),  # layers
        st.integers(1, 40),  # tokens
        st.integers(1, 4),  # gpus
        st.integers(0, 2**31 - 1),  # seed
        st.sampled_from(["gshard", "tutel", "fairseq"]),
        st.floats(0.05, 3.0),
    )
)


@settings(max_examples=150, deadline=None)
@given(routing)
def test_conservation_and_agreement_with_the_exact_keep_mask(case) -> None:
    experts, top_k, layers, tokens, gpus, seed, formula, factor = case
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((2, layers, tokens, experts)), axis=-1)[..., :top_k]
    source = np.repeat(
        np.arange(gpus), np.bincount(np.arange(tokens) * gpus // tokens, minlength=gpus)
    )
    gating = _static(formula=formula, capacity_factor=factor, min_capacity=1)
    outcome = gating.gate(ids, source, gpus, experts)
    kept = gating.kept(ids, source, gpus, experts)
    counts = np.stack(
        [
            np.bincount(ids[n, layer][kept[n, layer]], minlength=experts)
            for n in range(2)
            for layer in range(layers)
        ]
    ).reshape(2, layers, experts)
    assert np.array_equal(outcome.tokens_NLE, counts)  # count path == exact mask
    routed = ids.size
    processed = int(outcome.tokens_NLE.sum())
    dropped = int((~kept).sum())
    assert routed == processed + dropped
    assert (outcome.tokens_NLE <= outcome.slots_NLE).all()
    capacity = gating.capacity(np.bincount(source, minlength=gpus), experts, top_k)
    assert (outcome.slots_NLE == capacity.sum()).all()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 16), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_dynamic_processes_every_assignment_exactly(experts, tokens, seed) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, experts, size=(3, 2, tokens, 1))
    outcome = DynamicGating(DynamicGating.Params()).gate(ids, np.zeros(tokens, int), 1, experts)
    assert outcome.tokens_NLE.sum() == ids.size
    assert outcome.slots_NLE is outcome.tokens_NLE
    assert outcome.capacity_G is None and outcome.count_exchange
    assert np.array_equal(
        outcome.tokens_NLE[1, 0], np.bincount(ids[1, 0].ravel(), minlength=experts)
    )


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        GATING.register("static")(StaticGating)
    with pytest.raises(ValueError, match="unknown gating policy 'nope'"):
        GATING.validate({"name": "nope"})
    assert {"static", "dynamic"} <= set(GATING.names())
