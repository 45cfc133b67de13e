"""Request traces: each shipped example loads to the numbers it was written with, each format
is told from its columns, and each bad row is one line naming the file, the line and the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.errors import ConfigError
from moesim.workload import Requests, load_request_trace, save_request_trace
from tests.conftest import SCENARIOS

EXAMPLES = SCENARIOS / "requests"
# The examples' request i: prompt 32 + 16 (i mod 8) tokens, output 8 + 4 (i mod 5), 60 requests.
PROMPT = [32 + 16 * (i % 8) for i in range(60)]
OUTPUT = [8 + 4 * (i % 5) for i in range(60)]


@pytest.mark.parametrize(
    ("name", "gap_s"),
    [
        ("native.csv", 0.25),  # rows 11 and 12 swapped in the file: sorted back
        ("vidur.csv", 0.5),
        ("azure.csv", 1.5),  # 2023-11-16 18:15:46.6805900 + 1.5 s per row
        ("mooncake.jsonl", 0.25),  # 250 ms per row
    ],
)
def test_each_shipped_example_loads_to_its_numbers(name: str, gap_s: float) -> None:
    trace = load_request_trace(EXAMPLES / name)
    assert len(trace) == 60
    assert trace.arrival_s == pytest.approx([gap_s * i for i in range(60)], abs=1e-9)
    assert trace.prompt_tokens.tolist() == PROMPT
    assert trace.output_tokens.tolist() == OUTPUT
    assert trace.prompt_tokens.dtype == np.int64 and trace.arrival_s.dtype == np.float64


def test_sharegpt_style_lists_give_lengths_and_need_an_arrival_process() -> None:
    trace = load_request_trace(EXAMPLES / "sharegpt.json", arrivals=False)
    assert (trace.prompt_tokens.tolist(), trace.output_tokens.tolist()) == (PROMPT, OUTPUT)
    assert trace.arrival_s.tolist() == [0.0] * 60
    with pytest.raises(ConfigError, match="no arrival times"):
        load_request_trace(EXAMPLES / "sharegpt.json")


def test_count_caps_the_rows_read_before_sorting(tmp_path: Path) -> None:
    path = _file(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n3,1,1\n1,2,2\n0,3,3\n")
    first_two = load_request_trace(path, count=2)
    assert (first_two.arrival_s.tolist(), first_two.prompt_tokens.tolist()) == ([1.0, 3.0], [2, 1])
    assert load_request_trace(path).prompt_tokens.tolist() == [3, 2, 1]


def test_ties_keep_the_file_order_and_other_columns_are_ignored(tmp_path: Path) -> None:
    text = "extra,arrived_at,num_decode_tokens,num_prefill_tokens\nx,2,5,50\ny,1,6,60\nz,1,7,70\n"
    trace = load_request_trace(_file(tmp_path, "v.csv", text))
    assert trace.arrival_s.tolist() == [1.0, 1.0, 2.0]
    assert trace.prompt_tokens.tolist() == [60, 70, 50]
    assert trace.output_tokens.tolist() == [6, 7, 5]


def test_json_variants_timezones_and_whole_floats(tmp_path: Path) -> None:
    items = '[{"prompt_tokens": 5, "completion_tokens": 2.0},\n {"prompt_tokens": 7, '
    items += '"completion_tokens": 3}]'
    trace = load_request_trace(_file(tmp_path, "c.json", items), arrivals=False)
    assert (trace.prompt_tokens.tolist(), trace.output_tokens.tolist()) == ([5, 7], [2, 3])
    lines = '{"arrival_s": 0.5, "prompt_tokens": 4, "output_tokens": 1}\n\n'
    assert load_request_trace(_file(tmp_path, "n.jsonl", lines)).arrival_s.tolist() == [0.5]
    azure = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:01.5+00:00,10,2\n2024-05-10 02:00:00+02:00,11,3\n"
    )
    trace = load_request_trace(_file(tmp_path, "a.csv", azure))
    assert trace.arrival_s.tolist() == [0.0, 1.5]  # 02:00+02:00 is midnight UTC, first
    assert trace.prompt_tokens.tolist() == [11, 10]


def test_save_then_load_gives_the_same_table(tmp_path: Path) -> None:
    requests = Requests(
        np.array([0.0, 0.1, 1 / 3]), np.array([5, 6, 7], np.int64), np.array([1, 2, 3], np.int64)
    )
    save_request_trace(requests, tmp_path / "r.csv")
    again = load_request_trace(tmp_path / "r.csv")
    for column in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert getattr(again, column).tolist() == getattr(requests, column).tolist()


HEADER = "arrival_s,prompt_tokens,output_tokens\n"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("t.csv", HEADER + "0,1,1\n1,x,2\n", "line 3, prompt_tokens: not a number: 'x'"),
        ("t.csv", HEADER + "0,1,1\n1,2\n", "line 3, output_tokens: missing"),
        ("t.csv", HEADER + "0,1,1\n1,,2\n", "line 3, prompt_tokens: missing"),
        (
            "t.csv",
            HEADER + "0,1,1\n1,2,0\n",
            "line 3, output_tokens: 0 tokens; a length is at least 1",
        ),
        ("t.csv", HEADER + "0,-4,1\n", "line 2, prompt_tokens: -4 tokens; a length is at least 1"),
        ("t.csv", HEADER + "0,1.5,1\n", "line 2, prompt_tokens: 1.5 is not a whole number"),
        ("t.csv", HEADER + "0,1,1\n-2,1,1\n", "line 3, arrival_s: negative time -2"),
        (
            "t.csv",
            HEADER + "0,1,1\n1,2,3\n\nnan,1,1\n",
            "line 5, arrival_s: not a finite number: nan",
        ),
        ("t.csv", HEADER + "0,inf,1\n", "line 2, prompt_tokens: not a finite number: inf"),
        (
            "t.csv",
            HEADER + "0,99999999,1\n",
            "line 2, prompt_tokens: 1e+08 tokens; at most 16,777,216",
        ),
        (
            "t.csv",
            "arrival_s,prompt_tokens\n0,1\n",
            "line 1: no column output_tokens (native format)",
        ),
        (
            "t.csv",
            "a,b\n1,2\n",
            "line 1: no request-trace columns (expected arrival_s,prompt_tokens,output_tokens "
            "(native); arrived_at,num_prefill_tokens,num_decode_tokens (Vidur/Splitwise); "
            "TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM inference); "
            "timestamp,input_length,output_length (Mooncake), or a ShareGPT-style list with "
            "input_tokens and output_tokens)",
        ),
        (
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,1\nyesterday,1,1\n",
            "line 3, TIMESTAMP: not a date and time: 'yesterday'",
        ),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 3, "output_length": 1}\n'
            '{"timestamp": 5, "input_length": 3}\n',
            "line 2, output_length: missing",
        ),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 3, "output_length": 1}\n{"timestamp": 5,\n',
            "line 2: not JSON: Expecting property name enclosed in double quotes",
        ),
        (
            "m.jsonl",
            '\n{"timestamp": 0, "input_length": true, "output_length": 1}\n',
            "line 2, input_length: not a number: true",
        ),
        ("m.jsonl", "[1, 2]\n", "line 1: expected a JSON object per request"),
        (
            "s.json",
            '[\n{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 1},\n{"arrival_s": 1, '
            '"prompt_tokens": null, "output_tokens": 1}\n]',
            "line 3, prompt_tokens: not a number: null",
        ),
        (
            "s.json",
            '[\n{"input_tokens": 3, "output_tokens": 1}\n{"input_tokens": 4, "output_tokens": 1}]',
            "line 3: not JSON: expected , or ] after a request",
        ),
        ("s.json", "[]", "no requests"),
        ("t.csv", HEADER, "no requests (only a header)"),
        ("t.csv", "\n\n", "empty: no header and no requests"),
    ],
)
def test_each_bad_trace_is_one_line_naming_file_line_and_column(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = _file(tmp_path, name, text)
    with pytest.raises(ConfigError) as error:
        load_request_trace(path)
    assert str(error.value) == f"{path}: {expected}"


def test_an_unreadable_trace_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_request_trace(tmp_path / "none.csv")
    assert str(error.value) == f"{tmp_path / 'none.csv'}: cannot read: No such file or directory"
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as error:
        load_request_trace(binary)
    assert str(error.value) == f"{binary}: cannot read: not UTF-8 text"


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path
