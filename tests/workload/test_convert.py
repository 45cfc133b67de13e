"""Converters from FLAME-MoE Parquet and Megatron-Core JSONL, on files the tests make."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moesim.cli import main
from moesim.errors import MoesimError
from moesim.workload import read_trace
from moesim.workload.convert import convert

TOKENS, K = 10, 2


def _flame_layers(tmp_path, layers=3):
    """Layer files named out of lexical order; token t of layer l picks (l+t)%8, (l+t+1)%8."""
    folder = tmp_path / "flame"
    folder.mkdir()
    for layer in range(layers):
        indices = [[(layer + t) % 8, (layer + t + 1) % 8] for t in range(TOKENS)]
        scores = [[0.75, 0.25] for _ in range(TOKENS)]
        table = pa.table({"indices": indices, "scores": scores})
        pq.write_table(table, folder / f"layer_{layer * 5:d}.parquet")  # layer_0, _5, _10
    return folder


def test_flame_folder_becomes_steps_in_layer_order(tmp_path):
    trace = convert([_flame_layers(tmp_path)], None, tokens_per_step=4)
    ids = trace.expert_ids
    assert ids.shape == (2, 3, 4, 2)  # 10 tokens -> 2 whole steps of 4
    for layer in range(3):
        stream = ids[:, layer].reshape(-1, 2)
        expected = [[(layer + t) % 8, (layer + t + 1) % 8] for t in range(8)]
        assert stream.tolist() == expected
    assert np.all(trace.gate_weights[..., 0] == 0.75)


def test_flame_single_file_with_a_layer_column(tmp_path):
    rows = [(layer, [layer, layer + 1]) for layer in (0, 1) for _ in range(6)]
    table = pa.table({"layer": [r[0] for r in rows], "indices": [r[1] for r in rows]})
    pq.write_table(table, tmp_path / "all.parquet")
    trace = convert([tmp_path / "all.parquet"], "flame", tokens_per_step=3)
    assert trace.expert_ids.shape == (2, 2, 3, 2) and trace.gate_weights is None
    assert np.all(trace.expert_ids[:, 1] == [1, 2])


def _megatron(tmp_path):
    """Two ranks, 2 steps, layers 3 and 7, 2 tokens per rank; plus records to be ignored."""
    path = tmp_path / "trace.jsonl"
    lines = []
    for step in (0, 1):
        for layer in (3, 7):
            for rank in (1, 0):  # out of order on purpose
                top = [[step, layer % 8], [rank + 2, 5]]
                lines.append(
                    {
                        "step": step,
                        "stage": "pre_dispatch",
                        "block": "decoder",
                        "layer": layer,
                        "rank": rank,
                        "num_tokens": 2,
                        "topk": 2,
                        "top_indices": top,
                    }
                )
    lines.append(
        {
            "step": 0,
            "stage": "pre_dispatch",
            "block": "decoder",
            "layer": 3,
            "mtp_idx": 0,
            "rank": 0,
            "top_indices": [[9, 9]],
        }
    )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_megatron_records_group_by_step_and_concatenate_ranks(tmp_path):
    ids = convert([_megatron(tmp_path)], None, None).expert_ids
    assert ids.shape == (2, 2, 4, 2)  # a step: 2 ranks x 2 tokens; layers 3 and 7
    # step 1, layer 7: rank 0's tokens then rank 1's
    assert ids[1, 1].tolist() == [[1, 7], [2, 5], [1, 7], [3, 5]]


def test_megatron_garbage_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0, "layer": 1, "top_indices": [[1, 2]]}\nnot json\n')
    with pytest.raises(MoesimError, match=r"bad\.jsonl:2: expected a record"):
        convert([path], "megatron", None)


def test_cli_convert_writes_a_trace_with_metadata(tmp_path, capsys):
    out = tmp_path / "out.npz"
    code = main(
        [
            "trace",
            "convert",
            str(_megatron(tmp_path)),
            "--out",
            str(out),
            "--num-experts",
            "8",
            "--model",
            "mcore-test",
        ]
    )
    assert code == 0
    trace = read_trace(out)
    assert trace.metadata["num_experts"] == 8 and trace.metadata["model"] == "mcore-test"
    assert trace.metadata["top_k"] == 2 and "megatron jsonl" in trace.metadata["source"]
    assert main(["trace", "convert", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_flame_ids_are_ordered_by_score_and_bad_values_refused(tmp_path):
    table = pa.table({"indices": [[1, 2], [3, 4]], "scores": [[0.1, 0.9], [0.6, 0.4]]})
    pq.write_table(table, tmp_path / "layer_0.parquet")
    trace = convert([tmp_path / "layer_0.parquet"], "flame", tokens_per_step=2)
    assert trace.expert_ids[0, 0].tolist() == [[2, 1], [3, 4]]
    np.testing.assert_allclose(trace.gate_weights[0, 0], [[0.9, 0.1], [0.6, 0.4]], rtol=1e-6)
    pq.write_table(pa.table({"indices": [[1, None], [3, 4]]}), tmp_path / "null.parquet")
    with pytest.raises(MoesimError, match="missing values"):
        convert([tmp_path / "null.parquet"], "flame", 2)
    pq.write_table(pa.table({"indices": [[1.5, 2.0]]}), tmp_path / "float.parquet")
    with pytest.raises(MoesimError, match="expected integers"):
        convert([tmp_path / "float.parquet"], "flame", 1)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([[1, 2]], "expected a record"),
        ([{"step": 0, "layer": 0, "top_indices": []}], "expected a record"),
        (
            [
                {"step": 0, "layer": 0, "rank": 0, "top_indices": [[1, 2]]},
                {"step": 0, "layer": 0, "rank": 1, "top_indices": [[1]]},
            ],
            "disagree on top-k",
        ),
    ],
)
def test_megatron_malformed_records_are_one_line(tmp_path, capsys, records, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert main(["trace", "convert", str(path), "--out", str(tmp_path / "o.npz")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_cli_stats_refuses_ids_out_of_range_in_one_line(tmp_path, capsys):
    path = tmp_path / "big.npz"
    np.savez(path, expert_ids=np.full((2, 2, 3, 1), 9), metadata=np.array('{"num_experts": 4}'))
    assert main(["trace", "stats", str(path)]) == 2
    assert "ids span [9, 9], expected [0, 3]" in capsys.readouterr().err
