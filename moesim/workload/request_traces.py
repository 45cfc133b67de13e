"""Request traces: arrival times and token counts per request, from CSV, JSON Lines or JSON.

The container is told from the first character (``[`` a JSON list, ``{`` JSON Lines, else CSV
with a header), the format from the column names (arrival, prompt tokens, output tokens),
whatever the file is called:

- native CSV: ``arrival_s`` (seconds), ``prompt_tokens``, ``output_tokens``;
- Vidur / Splitwise CSV: ``arrived_at`` (seconds), ``num_prefill_tokens``, ``num_decode_tokens``;
- Azure LLM inference CSV: ``TIMESTAMP`` (ISO date and time), ``ContextTokens``,
  ``GeneratedTokens``;
- Mooncake JSONL: ``timestamp`` (milliseconds), ``input_length``, ``output_length``;
- ShareGPT-style JSON list: no arrivals, ``input_tokens`` or ``prompt_tokens``, ``output_tokens``
  or ``completion_tokens``.

Azure times become seconds since the earliest row. Rows are sorted by arrival (stable). Other
columns are ignored. A bad row is one ConfigError naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.config.serving import MAX_REQUEST_TOKENS
from moesim.errors import ConfigError
from moesim.workload.requests import Requests

__all__ = ["MAX_TOKENS", "load_request_trace", "save_request_trace"]

MAX_TOKENS = MAX_REQUEST_TOKENS  # tokens in one prompt or output: as a drawn length's
_SPACE = re.compile(r"\s*")
_NUMBER_TYPES = (int, float, str)
_Check = tuple[str, np.ndarray, np.ndarray, str]  # column, values, bad rows, message of a value


@dataclass(frozen=True)
class _Format:
    name: str
    arrival: str | None
    prompt: str
    output: str
    seconds_per_unit: float | None  # of the arrival column; None: ISO dates and times

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.arrival, self.prompt, self.output) if c is not None)


_FORMATS = (
    _Format("native", "arrival_s", "prompt_tokens", "output_tokens", 1.0),
    _Format("Vidur/Splitwise", "arrived_at", "num_prefill_tokens", "num_decode_tokens", 1.0),
    _Format("Azure LLM inference", "TIMESTAMP", "ContextTokens", "GeneratedTokens", None),
    _Format("Mooncake", "timestamp", "input_length", "output_length", 1e-3),
    *(
        _Format("ShareGPT-style", None, prompt, output, 1.0)
        for prompt in ("input_tokens", "prompt_tokens")
        for output in ("output_tokens", "completion_tokens")
    ),
)


def _bad(file: str, line: int, column: str | None, message: str) -> ConfigError:
    return ConfigError(file, f"line {line}" + (f", {column}" if column else ""), message)


def _detect(names: set[str], file: str, line: int) -> _Format:
    """The format whose columns ``names`` hold (all of them, the most first)."""
    ranked = sorted(
        _FORMATS,
        key=lambda f: (set(f.columns) <= names, len(set(f.columns) & names)),
        reverse=True,
    )
    best = ranked[0]
    missing = [c for c in best.columns if c not in names]
    if len(missing) == len(best.columns):
        expected = "; ".join(f"{','.join(f.columns)} ({f.name})" for f in _FORMATS[:4])
        raise _bad(
            file,
            line,
            None,
            f"no request-trace columns (expected {expected}, or a "
            "ShareGPT-style list with input_tokens and output_tokens)",
        )
    if missing:
        raise _bad(file, line, None, f"no column {missing[0]} ({best.name} format)")
    return best


@dataclass
class _Rows:
    """Raw values of a trace's columns (strings from CSV, JSON values), with their lines."""

    format: _Format
    lines: list[int]
    values: dict[str, list[Any]]


def _csv_rows(lines: Iterator[str], first_line: int, file: str, count: int | None) -> _Rows:
    reader = csv.reader(lines)
    header = [name.strip() for name in next(reader)]
    form = _detect(set(header), file, first_line)
    index = {column: header.index(column) for column in form.columns}
    rows = _Rows(form, [], {column: [] for column in form.columns})
    for row in itertools.islice((r for r in reader if r), count):
        line = first_line + reader.line_num - 1
        for column, at in index.items():
            if at >= len(row) or not row[at].strip():
                raise _bad(file, line, column, "missing")
            rows.values[column].append(row[at])
        rows.lines.append(line)
    return rows


def _json_objects(text: str, first_line: int, file: str) -> Iterator[tuple[int, Any]]:
    """Each item of a JSON list, with the line it starts on."""
    decoder = json.JSONDecoder()
    at = _SPACE.match(text, text.index("[") + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", at):
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as error:
            raise _bad(
                file, error.lineno + first_line - 1, None, f"not JSON: {error.msg}"
            ) from None
        yield first_line + text.count("\n", 0, at), item
        at = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith("]", at):
            return
        if not text.startswith(",", at):
            line = first_line + text.count("\n", 0, at)
            raise _bad(file, line, None, "not JSON: expected , or ] after a request")
        at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]


def _json_lines(lines: Iterator[str], first_line: int, file: str) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(lines, start=first_line):
        if text.strip():
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as error:
                raise _bad(file, line, None, f"not JSON: {error.msg}") from None


def _object_rows(items: Iterator[tuple[int, Any]], file: str, count: int | None) -> _Rows:
    rows: _Rows | None = None
    for line, item in itertools.islice(items, count):
        if not isinstance(item, dict):
            raise _bad(file, line, None, "expected a JSON object per request")
        if rows is None:
            form = _detect(set(item), file, line)
            rows = _Rows(form, [], {column: [] for column in form.columns})
        for column, values in rows.values.items():
            if column not in item:
                raise _bad(file, line, column, "missing")
            values.append(item[column])
        rows.lines.append(line)
    if rows is None:
        raise ConfigError(file, None, "no requests")
    return rows


def _read(path: Path, count: int | None) -> _Rows:
    file = str(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            lines = iter(stream)
            first_line = 1
            first = next(lines, "")
            while first and not first.strip():
                first, first_line = next(lines, ""), first_line + 1
            if not first:
                raise ConfigError(file, None, "empty: no header and no requests")
            rest = itertools.chain([first], lines)
            if first.lstrip().startswith("["):
                items = _json_objects("".join(rest), first_line, file)
                return _object_rows(items, file, count)
            if first.lstrip().startswith("{"):
                return _object_rows(_json_lines(rest, first_line, file), file, count)
            return _csv_rows(rest, first_line, file, count)
    except OSError as error:
        raise ConfigError(file, None, f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, None, "cannot read: not UTF-8 text") from None
    except csv.Error as error:
        raise ConfigError(file, None, f"not CSV: {error}") from None


def _is_number(value: Any) -> bool:
    """A number or a string of one; JSON's true, null and lists are not."""
    if type(value) not in _NUMBER_TYPES:
        return False
    try:
        float(value)
    except (ValueError, OverflowError):
        return False
    return True


def _numbers(rows: _Rows, column: str, file: str) -> np.ndarray:
    """A column as float64; a value that is not a number names its line."""
    raw = rows.values[column]
    if all(type(value) in _NUMBER_TYPES for value in raw):
        try:
            return np.array(raw, dtype=np.float64)
        except (ValueError, OverflowError):
            pass
    line, value = next((n, v) for n, v in zip(rows.lines, raw, strict=True) if not _is_number(v))
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    raise _bad(file, line, column, f"not a number: {shown}")


def _datetimes(rows: _Rows, column: str, file: str) -> np.ndarray:
    """A column of ISO dates and times as seconds since the earliest (UTC where unmarked)."""
    micro = datetime.timedelta(microseconds=1)
    epoch = datetime.datetime(1970, 1, 1)
    values = np.empty(len(rows.lines), dtype=np.int64)
    for n, (line, value) in enumerate(zip(rows.lines, rows.values[column], strict=True)):
        try:
            moment = datetime.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise _bad(file, line, column, f"not a date and time: {value!r}") from None
        if moment.tzinfo is not None:
            moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
        values[n] = (moment - epoch) // micro
    return (values - values.min()) / 1e6


def _first_problem(checks: list[_Check], rows: _Rows, file: str) -> None:
    """Raise for the earliest row failing a check ``(column, values, bad mask, message)``."""
    found = [
        (int(np.argmax(bad)), order) for order, (_, _, bad, _) in enumerate(checks) if bad.any()
    ]
    if found:
        row, order = min(found)
        column, values, _, message = checks[order]
        raise _bad(file, rows.lines[row], column, message.format(values[row]))


def _length_checks(rows: _Rows, column: str, file: str) -> tuple[np.ndarray, list[_Check]]:
    tokens = _numbers(rows, column, file)
    finite = np.isfinite(tokens)
    return tokens, [
        (column, tokens, ~finite, "not a finite number: {}"),
        (column, tokens, finite & (tokens < 1), "{:g} tokens; a length is at least 1"),
        (column, tokens, finite & (tokens != np.round(tokens)), "{:g} is not a whole number"),
        (column, tokens, finite & (tokens > MAX_TOKENS), f"{{:g}} tokens; at most {MAX_TOKENS:,}"),
    ]


def _arrival_checks(
    rows: _Rows, column: str, file: str, form: _Format
) -> tuple[np.ndarray, list[_Check]]:
    if form.seconds_per_unit is None:
        return _datetimes(rows, column, file), []
    times = _numbers(rows, column, file)
    finite = np.isfinite(times)
    return times * form.seconds_per_unit, [
        (column, times, ~finite, "not a finite number: {}"),
        (column, times, finite & (times < 0), "negative time {:g}"),
    ]


def load_request_trace(
    path: str | Path, count: int | None = None, arrivals: bool = True
) -> Requests:
    """The first ``count`` requests (all by default) of a trace, sorted by arrival.

    ``arrivals=False`` keeps the order but not the times of the trace's arrivals (all zero:
    an arrival process gives them); a trace without any, such as a ShareGPT-style list, needs
    it.
    """
    file = str(path)
    rows = _read(Path(path), count)
    form = rows.format
    if not rows.lines:
        raise ConfigError(file, None, "no requests (only a header)")
    if arrivals and form.arrival is None:
        raise ConfigError(
            file,
            None,
            f"no arrival times ({form.name} format): give workload.requests.arrival "
            "a process (poisson, gamma, constant or offline)",
        )
    arrival_s, checks = np.zeros(len(rows.lines)), []
    if form.arrival is not None:
        arrival_s, checks = _arrival_checks(rows, form.arrival, file, form)
    prompt, prompt_checks = _length_checks(rows, form.prompt, file)
    output, output_checks = _length_checks(rows, form.output, file)
    _first_problem([*checks, *prompt_checks, *output_checks], rows, file)
    order = np.argsort(arrival_s, kind="stable")
    timed = arrival_s[order] if arrivals else np.zeros(len(order))
    return Requests(timed, prompt[order].astype(np.int64), output[order].astype(np.int64))


def save_request_trace(requests: Requests, path: str | Path) -> None:
    """Write ``requests`` as a native CSV trace (``arrival_s,prompt_tokens,output_tokens``)."""
    with Path(path).open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["arrival_s", "prompt_tokens", "output_tokens"])
        writer.writerows(
            zip(
                map(repr, requests.arrival_s.tolist()),
                requests.prompt_tokens.tolist(),
                requests.output_tokens.tolist(),
                strict=True,
            )
        )
