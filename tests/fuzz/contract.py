"""The input contract every fuzz test checks, and the mutations they apply.

A command either succeeds (exit 0, standard JSON on stdout where asked, files only under its
``--out``) or refuses its input in one line on stderr with exit 2. It never raises past
``main``, never prints a traceback, never runs past ``BOUND_S`` and never touches a file
outside the folder it was given.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCALE = int(os.environ.get("MOESIM_FUZZ_EXAMPLES", "1"))  # multiplies every test's examples
BOUND_S = 60  # the slowest accepted fuzz input runs in seconds; past this it is a hang
DELETE = object()  # a mutation that removes the key

# Values that have broken parsers before: extremes, non-finite numbers, markup, paths, types.
NASTY = st.sampled_from(
    [
        0,
        -1,
        1,
        2,
        3,
        7,
        1e-12,
        0.5,
        1.5,
        1e30,
        2**31,
        2**63,
        10**30,
        float("inf"),
        float("-inf"),
        float("nan"),
        "",
        "x",
        "[red]x[/red]",
        "ablation [/tmp/run]",
        "../escape",
        "/tmp/abs",
        "1e400GB",
        "-5GB",
        "12 parsecs",
        "static",
        "dynamic",
        None,
        True,
        False,
        [],
        [1, 2],
        {},
        {"name": "static"},
        {"name": ["static"]},
    ]
)
VALUES = st.one_of(
    NASTY,
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.text(alphabet="ab[]/.:\\{}'\"#&*!|>-_ 0123456789", max_size=12),
)


def fuzz_settings(examples: int) -> settings:
    """``examples`` derandomised examples (times ``MOESIM_FUZZ_EXAMPLES``), no deadline."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict (list items included), the root excluded."""
    found: list[tuple] = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        found.append((*prefix, key))
        if isinstance(value, dict | list):
            found.extend(paths(value, (*prefix, key)))
    return found


def mutated(tree: dict, mutations: list[tuple[tuple, Any]]) -> dict:
    """A copy of ``tree`` with each ``(path, value)`` set (``DELETE`` removes the key); a path
    that an earlier mutation removed is skipped."""
    out = copy.deepcopy(tree)
    for path, value in mutations:
        node = out
        try:
            for key in path[:-1]:
                node = node[key]
            if value is DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue
    return out


WORDS = ["static", "dynamic", "lru", "lifo", "belady", "zipf", "uniform", "prefill", "decode"]


def plausible(value: Any) -> st.SearchStrategy:
    """Values near ``value``, of its type: most are valid, so the runs get past validation."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, 2 * value + 2)
    if isinstance(value, float):
        return st.floats(0.0, 2 * value + 1.0)
    if isinstance(value, str):
        return st.sampled_from([value, *WORDS])
    return st.just(value)


def mutations(tree: dict, most: int = 3) -> st.SearchStrategy:
    """Up to ``most`` mutations of ``tree``: a nearby value, a hostile one, a removed key or
    an unknown key."""
    where = st.sampled_from(paths(tree))
    unknown = where.map(lambda p: (*p[:-1], "surprise"))
    hostile = st.tuples(st.one_of(where, unknown), st.one_of(VALUES, st.just(DELETE)))
    nearby = where.flatmap(lambda p: st.tuples(st.just(p), plausible(value_at(tree, p))))
    return st.lists(st.one_of(nearby, nearby, hostile), min_size=1, max_size=most)


def value_at(tree: Any, path: tuple) -> Any:
    """The value at key path ``path`` of ``tree``."""
    for key in path:
        tree = tree[key]
    return tree


@contextlib.contextmanager
def bounded(seconds: int = BOUND_S) -> Iterator[None]:
    """Fail as a hang when the body runs past ``seconds``."""

    def hang(_signum, _frame):
        raise AssertionError(f"hung: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, float]:
    """Every file under ``folder`` but ``skip``, with its modification time."""
    return {
        str(p): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and (skip is None or skip not in p.parents)
    }


def _no_nonstandard(token: str) -> None:
    raise AssertionError(f"non-standard JSON number {token}")


def check(argv: list[str], capsys, sandbox: Path, out: Path | None) -> tuple[int, str]:
    """Run ``moesim argv`` and assert the contract; returns the exit status and stdout."""
    before = snapshot(sandbox, out)
    with bounded():
        status = main(argv)
    captured = capsys.readouterr()
    event(f"{argv[0]}: exit {status}")  # --hypothesis-show-statistics: how many ran, refused
    assert status in (0, 1, 2), f"exit status {status}"
    assert "Traceback" not in captured.err + captured.out
    if status == 2:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("moesim: error: "), captured.err
    if status == 0 and "--json" in argv:
        json.loads(captured.out, parse_constant=_no_nonstandard)
    if out is not None and out.exists():
        for path in out.rglob("*.json"):
            json.loads(path.read_text(), parse_constant=_no_nonstandard)
    assert snapshot(sandbox, out) == before, "a file outside --out changed"
    return status, captured.out
