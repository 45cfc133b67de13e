"""Trace routing: loading, validation errors and re-cutting to another batch size."""

import numpy as np
import pytest

from moesim.errors import ConfigError
from moesim.workload import load_trace, recut, tokens_per_gpu


def _save(tmp_path, ids, name="t.npz"):
    path = tmp_path / name
    np.savez(path, expert_ids=ids)
    return path


def test_load_and_recut_preserve_token_order(tmp_path) -> None:
    ids = np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1) % 5
    trace = load_trace(_save(tmp_path, ids), num_experts=5, top_k=1, layers=3)
    assert np.array_equal(trace, ids)
    cut = recut(trace, steps=4, tokens=2)
    assert cut.shape == (4, 3, 2, 1)
    # layer 1's token stream, step after step, is unchanged by the cut
    assert np.array_equal(cut[:, 1].ravel(), ids[:, 1].ravel())


def test_recut_needs_enough_tokens(tmp_path) -> None:
    ids = np.zeros((2, 1, 4, 2), dtype=np.int64)
    ids[..., 1] = 1
    with pytest.raises(ConfigError, match="holds 8 tokens per layer"):
        recut(ids, steps=3, tokens=4)


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        (np.zeros((2, 3, 4)), "expected 4 non-empty dims"),
        (np.zeros((2, 3, 4, 1)), "expected integers"),
        (np.zeros((2, 2, 4, 1), dtype=int), "has 2 MoE layers"),
        (np.zeros((2, 3, 4, 2), dtype=int), "has top_k 2"),
        (np.full((2, 3, 4, 1), 9), "expected [0, 4]"),
    ],
)
def test_bad_traces_are_named(tmp_path, ids, fragment) -> None:
    with pytest.raises(ConfigError) as caught:  # shapes on loading, ids on reading the steps
        loaded = load_trace(_save(tmp_path, ids), num_experts=5, top_k=1, layers=3)
        recut(loaded, steps=2, tokens=4, num_experts=5)
    assert fragment in caught.value.message
    assert caught.value.field == "expert_ids"


def test_a_missing_array_or_file(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, other=np.zeros(3))
    with pytest.raises(ConfigError, match="missing"):
        load_trace(path, 4, 1, 1)
    with pytest.raises(ConfigError, match="cannot read"):
        load_trace(tmp_path / "absent.npz", 4, 1, 1)


def test_tokens_split_contiguously_with_the_remainder_first() -> None:
    assert tokens_per_gpu(10, 4).tolist() == [3, 3, 2, 2]
    assert tokens_per_gpu(3, 8).tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
