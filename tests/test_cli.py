"""The moesim command: summary, outputs, overrides and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

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
    assert error.startswith("moesim: error: ") and "workload.batch_size" in error
    assert str(TINY) in error
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
