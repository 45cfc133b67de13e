"""Synthetic routing: distinct top-k, Zipf popularity, locality, determinism."""

import itertools

import numpy as np
import pytest

from moesim.config import SyntheticRouting
from moesim.workload import SyntheticRouter, rank_table, zipf_weights


def _router(skew=1.0, locality=0.0, experts=16, top_k=2, layers=3, seed=0, dist="zipf"):
    spec = SyntheticRouting(source="synthetic", distribution=dist, skew=skew, locality=locality)
    return SyntheticRouter(spec, experts, top_k, layers, np.random.default_rng(seed))


def test_zipf_weights_closed_form() -> None:
    weights = zipf_weights(4, 1.0)
    harmonic = 1 + 1 / 2 + 1 / 3 + 1 / 4
    assert weights == pytest.approx(
        [1 / harmonic, 0.5 / harmonic, 1 / 3 / harmonic, 0.25 / harmonic]
    )


def test_rank_table_rounds_each_weight_to_the_table_resolution() -> None:
    weights = zipf_weights(512, 1.2)
    table = rank_table(weights, bits=20)
    counts = np.bincount(table, minlength=512)
    assert counts.sum() == 2**20
    assert np.abs(counts / 2**20 - weights).max() <= 2**-20


@pytest.mark.parametrize(("experts", "top_k", "skew"), [(8, 8, 3.0), (16, 4, 2.0), (256, 8, 1.0)])
def test_every_token_picks_distinct_experts(experts, top_k, skew) -> None:
    ids = _router(skew=skew, experts=experts, top_k=top_k).draw(5, 200)
    assert ids.shape == (5, 3, 200, top_k)
    ordered = np.sort(ids, axis=-1)
    assert (np.diff(ordered, axis=-1) > 0).all()
    assert ids.min() >= 0 and ids.max() < experts


def test_first_choices_follow_the_zipf_law_by_rank() -> None:
    # locality 1: one ranking for the whole run, so first choices by rank follow the weights.
    router = _router(skew=1.0, locality=1.0, experts=16, top_k=1, layers=1)
    ids = router.draw(1, 1)  # fixes the ranking
    ranking = router._ranking_LE[0]
    ids = router.draw(50, 2000)
    rank_of_expert = np.argsort(ranking)
    freq = np.bincount(rank_of_expert[ids[..., 0].ravel()], minlength=16) / ids[..., 0].size
    assert freq == pytest.approx(zipf_weights(16, 1.0), abs=0.004)


def test_uniform_spreads_load_evenly() -> None:
    ids = _router(dist="uniform", experts=8, top_k=2).draw(20, 1000)
    freq = np.bincount(ids.ravel(), minlength=8) / ids.size
    assert freq == pytest.approx(np.full(8, 1 / 8), abs=0.005)


@pytest.mark.parametrize("locality", [0.0, 0.3, 0.9, 1.0])
def test_locality_is_the_chance_a_layer_keeps_its_ranking(locality) -> None:
    router = _router(locality=locality, experts=32, layers=4)
    chunks = [router.rankings(300), router.rankings(300)]  # across chunks
    rankings = np.concatenate([ranking_XE[row_NL] for ranking_XE, row_NL in chunks])
    kept = (rankings[1:] == rankings[:-1]).all(axis=-1)
    assert kept.mean() == pytest.approx(locality, abs=0.04)


def test_same_seed_same_routing_and_chunking_does_not_matter() -> None:
    a = _router(locality=0.5, seed=11).draw(10, 64)
    b = _router(locality=0.5, seed=11).draw(10, 64)
    assert np.array_equal(a, b)
    c = _router(locality=0.5, seed=12).draw(10, 64)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("experts", "key_bits"), [(3, 1), (4, 2), (5, 16)])
def test_rankings_are_uniform_permutations_whatever_the_key_ties(experts, key_bits) -> None:
    # 1-bit keys over 3 experts always tie (a pair, or all three): every tie path runs
    rows = 60000
    order = _router(experts=experts, seed=3)._permutations(rows, key_bits=key_bits)
    assert (np.sort(order, axis=1) == np.arange(experts)).all()
    perms = {p: i for i, p in enumerate(itertools.permutations(range(experts)))}
    index = np.array([perms[tuple(row)] for row in order[:6000].tolist()])
    share = 1 / len(perms)
    freq = np.bincount(index, minlength=len(perms)) / index.size
    assert np.abs(freq - share).max() < 5 * np.sqrt(share / index.size)
    # each expert at each rank: 1 / E
    at_rank = np.stack([np.bincount(order[:, r], minlength=experts) for r in range(experts)])
    assert np.abs(at_rank / rows - 1 / experts).max() < 5 * np.sqrt(1 / experts / rows)
