"""The complete trace format: metadata, gate weights, memory maps, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import ConfigError
from moesim.workload import load_trace, read_trace, recut, save_trace


def _ids(steps=3, layers=2, tokens=4, top_k=2, experts=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.permutation(experts)[:top_k] for _ in range(steps * layers * tokens)]
    ).reshape(steps, layers, tokens, top_k)


def test_saved_trace_reads_back_memory_mapped_with_weights_and_metadata(tmp_path):
    ids = _ids()
    weights = np.random.default_rng(1).random(ids.shape).astype(np.float32)
    meta = {
        "model": "m",
        "num_experts": 6,
        "top_k": 2,
        "phase": "prefill",
        "source": "test",
        "date": "2026-11-24",
    }
    path = save_trace(tmp_path / "t.npz", ids, gate_weights=weights, metadata=meta)
    trace = read_trace(path)
    assert isinstance(trace.expert_ids, np.memmap) and trace.expert_ids.dtype == np.int16
    assert np.array_equal(trace.expert_ids, ids)
    assert np.array_equal(trace.gate_weights, weights)
    assert trace.metadata == meta and trace.num_experts == 6
    loaded = load_trace(path, num_experts=6, top_k=2, layers=2)
    assert np.array_equal(
        recut(loaded, steps=6, tokens=2)[:, 1].ravel(), ids[:, 1].ravel().reshape(-1)
    )


def test_recut_reads_only_the_steps_it_needs_and_keeps_order(tmp_path):
    ids = _ids(steps=10, tokens=4)
    path = save_trace(tmp_path / "t.npz", ids)
    cut = recut(load_trace(path, 6, 2, 2), steps=3, tokens=3)  # 9 tokens: 3 trace steps
    assert cut.shape == (3, 2, 3, 2) and not isinstance(cut, np.memmap)
    stream = ids.transpose(1, 0, 2, 3).reshape(2, -1, 2)[:, :9]
    assert np.array_equal(cut.transpose(1, 0, 2, 3).reshape(2, -1, 2), stream)


def test_metadata_that_contradicts_the_model_is_named(tmp_path):
    path = save_trace(tmp_path / "t.npz", _ids(), metadata={"num_experts": 8})
    with pytest.raises(ConfigError, match=r"metadata\.num_experts: is 8, the model has 6"):
        load_trace(path, num_experts=6, top_k=2, layers=2)


def test_malformed_members_are_one_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, expert_ids=_ids(), gate_weights=np.zeros(3))
    with pytest.raises(ConfigError, match="gate_weights: shape"):
        read_trace(path)
    np.savez(path, expert_ids=_ids(), metadata=np.array("[1, 2]"))
    with pytest.raises(ConfigError, match="expected a JSON object"):
        read_trace(path)


def test_a_failed_write_leaves_the_previous_trace(tmp_path):
    path = save_trace(tmp_path / "t.npz", _ids(), metadata={"model": "first"})
    with pytest.raises(ValueError):
        save_trace(path, _ids(), gate_weights=np.zeros(2))
    assert read_trace(path).metadata == {"model": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]


def test_a_failed_replace_cleans_up_and_keeps_what_was_there(tmp_path):
    target = tmp_path / "t.npz"
    target.mkdir()  # a folder where the file should go: the final replace fails
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        save_trace(target, _ids())
    assert (target / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]


def test_truncated_or_nested_members_are_refused(tmp_path):
    import io
    import zipfile

    array = io.BytesIO()
    np.lib.format.write_array(array, _ids())
    with zipfile.ZipFile(tmp_path / "cut.npz", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("expert_ids.npy", array.getvalue()[:-16])
        archive.writestr("other.npy", b"x" * 64)
    with pytest.raises(ConfigError, match="truncated"):
        read_trace(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "nested.npz", "w") as archive:
        archive.writestr("sub/expert_ids.npy", array.getvalue())
    with pytest.raises(ConfigError, match="expert_ids: missing"):
        read_trace(tmp_path / "nested.npz")


def test_a_run_checks_only_the_steps_it_reads(tmp_path):
    ids = _ids(steps=6)
    ids[5, 0, 0] = [0, 0]  # a duplicate in a step the scenario never reads
    path = save_trace(tmp_path / "t.npz", ids)
    assert recut(load_trace(path, 6, 2, 2), steps=2, tokens=4, num_experts=6).shape == (2, 2, 4, 2)
    with pytest.raises(ConfigError, match="same expert twice"):
        recut(load_trace(path, 6, 2, 2), steps=6, tokens=4, num_experts=6)
