"""Shared helpers of the sweep tests: sweep files over the tiny scenario."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.conftest import SCENARIOS

TINY = SCENARIOS / "tiny" / "tiny-dynamic.yaml"
# A point that runs far longer than any test waits for it (an hour here: 40 ms a step).
LONG = {"workload.steps": 100_000, "workload.batch_size": 131_072}
TOKENS = {"workload.routing.resolution": ["tokens"]}  # no count-level shortcut


def zip_after_long(*short_steps: int) -> dict:
    """Sections of the long point first, then short points of these steps."""
    return {
        "grid": TOKENS,
        "zip": {
            "workload.steps": [LONG["workload.steps"], *short_steps],
            "workload.batch_size": [LONG["workload.batch_size"]] + [8] * len(short_steps),
        },
    }


def write_sweep(folder: Path, spec: dict, name: str = "sweep.yaml", base: Path = TINY) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"base": str(base), **spec}))
    return path


def copy_base(folder: Path, **changes) -> Path:
    """The tiny scenario written into ``folder``, with top-level sections updated."""
    data = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        data[key] = data[key] | value if isinstance(value, dict) else value
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sweep_workers(parent: int | None = None) -> list[int]:
    """The live spawned sweep workers of ``parent`` (default: this process), from /proc."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found
