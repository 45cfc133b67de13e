"""The moesim command: summary, outputs, overrides and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "scenarios" / "tiny" / "tiny-static.yaml"


def test_run_writes_result_and_trace(tmp_path, capsys) -> None:
    assert main(["run", str(TINY), "--out", str(tmp_path), "--chrome-trace"]) == 0
    printed = capsys.readouterr().out
    assert "throughput" in printed and "time breakdown" in printed
    result = json.loads((tmp_path / "result.json").read_text())
    for key in (
        "throughput_tokens_per_s",
        "latency_s",
        "time_breakdown_s",
        "tokens",
        "memory",
        "alltoall_bytes",
        "load_imbalance",
        "simulated_seconds",
        "wall_seconds",
        "events",
        "per_step",
        "config",
    ):
        assert key in result
    assert set(result["latency_s"]) == {"mean", "p50", "p99"}
    assert set(result["time_breakdown_s"]) >= {
        "attention",
        "gate",
        "alltoall",
        "expert",
        "transfer",
        "other",
    }
    tokens = result["tokens"]
    assert tokens["routed"] == tokens["processed"] + tokens["dropped"]
    assert len(result["memory"]["peak_bytes_per_device"]) == 4
    assert result["config"]["policies"]["gating"]["name"] == "static"
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert {e["pid"] for e in trace["traceEvents"]} == {0, 1, 2, 3}


def test_set_overrides_a_field(tmp_path, capsys) -> None:
    main(["run", str(TINY), "--set", "policies.gating={name: dynamic}", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"]["dropped"] == 0 and result["tokens"]["padded"] == 0


def test_bad_input_is_one_line_exit_2_and_keeps_earlier_outputs(tmp_path, capsys) -> None:
    assert main(["run", str(TINY), "--out", str(tmp_path)]) == 0
    before = (tmp_path / "result.json").read_text()
    capsys.readouterr()
    code = main(["run", str(TINY), "--out", str(tmp_path), "--set", "workload.batch_size=-1"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0
    assert error.startswith("moesim: error: --set workload.batch_size: ")
    assert (tmp_path / "result.json").read_text() == before
    # the same mistake inside the file names the file
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("batch_size: 4", "batch_size: -1"))
    assert main(["run", str(bad), "--out", str(tmp_path)]) == 2
    assert f"{bad}: workload.batch_size: " in capsys.readouterr().err
    assert (tmp_path / "result.json").read_text() == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "missing.yaml"], "cannot read"),
        (["run", str(TINY), "--set", "cluster.device=nope"], "no hardware profile named 'nope'"),
        (["run", str(TINY), "--chrome-trace"], "--chrome-trace needs --out"),
    ],
)
def test_errors_through_the_real_entry_point(args, fragment) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moesim.cli", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert fragment in done.stderr


def _bad_trace(tmp_path, ids) -> Path:
    np.savez(tmp_path / "t.npz", expert_ids=ids)
    return tmp_path / "t.npz"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: _bad_trace(d, np.zeros((2, 2, 64, 2), dtype=int)), "same expert twice"),
        (lambda d: _bad_trace(d, np.zeros((2, 2, 64, 2))), "expected integers"),
        (lambda d: _bad_trace(d, np.tile(np.arange(2), (1, 2, 8, 1))), "holds 8 tokens"),
        (lambda d: d, "cannot read as an .npz trace"),  # a folder
        (lambda d: (np.save(d / "x.npy", np.zeros(3)), d / "x.npy")[1], "not a zip file"),
    ],
)
def test_bad_trace_files_through_a_run_are_one_line(tmp_path, capsys, make, fragment) -> None:
    path = make(tmp_path)
    routing = f"workload.routing={{source: trace, path: {path}}}"
    code = main(["run", str(TINY), "--set", routing, "--set", "workload.phase=decode"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in error and str(path) in error
    assert error.count("\n") == 0


def test_a_trace_of_unsigned_ids_runs(tmp_path, capsys) -> None:
    ids = np.tile(np.array([[0, 1], [2, 3]], dtype=np.uint64), (10, 2, 4, 1)).reshape(10, 2, 8, 2)
    path = _bad_trace(tmp_path, ids)
    routing = f"workload.routing={{source: trace, path: {path}}}"
    assert (
        main(
            [
                "run",
                str(TINY),
                "--set",
                routing,
                "--set",
                "workload.phase=decode",
                "--set",
                "workload.batch_size=8",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tokens"]["routed"] == 10 * 2 * 8 * 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--out", "README.md"], "exists and is not a folder"),
        (["--out", "OUT", "--chrome-trace", "--trace-steps", "0"], "expected at least 1"),
        (["--set", "policies.gating={name: static, capacity_factor: .inf}"], "capacity_factor"),
        (["--set", "cluster.gpus_per_node=100000"], "at most 8192"),
        (
            [
                "--set",
                "workload.batch_size=100000000",
                "--set",
                "workload.routing={source: synthetic, resolution: tokens}",
            ],
            "token-expert pairs",
        ),
    ],
)
def test_impossible_requests_are_refused_before_running(tmp_path, capsys, args, fragment) -> None:
    args = [
        str(ROOT / a) if a == "README.md" else (str(tmp_path) if a == "OUT" else a) for a in args
    ]
    assert main(["run", str(TINY), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert fragment in error and error.count("\n") == 0


def test_yaml_that_is_not_utf8(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert main(["run", str(path)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_trace_convert_requests_writes_the_native_csv(tmp_path, capsys) -> None:
    source = ROOT / "scenarios" / "requests" / "mooncake.jsonl"
    out = tmp_path / "r.csv"
    assert main(["trace", "convert-requests", str(source), str(out), "--count", "3"]) == 0
    assert out.read_text() == (
        "arrival_s,prompt_tokens,output_tokens\n0.0,32,8\n0.25,48,12\n0.5,64,16\n"
    )
    captured = capsys.readouterr()
    assert "3 requests over 0.500 s, 144 prompt and 36 output tokens" in captured.out
    assert f"wrote {out}" in captured.err


def test_trace_convert_requests_reports_a_bad_row_in_one_line(tmp_path, capsys) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n1,-5,1\n")
    code = main(["trace", "convert-requests", str(source), str(tmp_path / "r.csv")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"moesim: error: {source}: line 3, num_prefill_tokens: -5 tokens; a length is at least 1"
    )
    assert not (tmp_path / "r.csv").exists()
