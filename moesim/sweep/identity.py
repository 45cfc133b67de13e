"""What a sweep point is: its resolved scenario, validated up front, and the hash of all that
determines its result.

The id hashes the fully resolved scenario (the base with its overrides, the model card and the
hardware profile as loaded), the content of every file the scenario names (a routing trace, a
trace to fit, a placement file) and the versions of moesim and numpy. A point whose base, card,
profile or files changed gets a new id and runs again; two sweeps share a row only when they
ask for the very same simulation, whose result is the same bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim import __version__
from moesim.api import check_trace_files
from moesim.config import Scenario, load_scenario
from moesim.errors import ConfigError, MoesimError
from moesim.sweep.spec import LoadedSweep, Point

__all__ = ["ResolvedPoint", "resolve_points"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedPoint:
    """A point of the sweep that loaded and validated, with its id."""

    point: Point
    id: str


def _named_files(scenario: Scenario) -> dict[str, str]:
    """``field → path`` of the files a scenario reads when it runs."""
    routing = scenario.workload.routing
    files = {
        "workload.routing.path": getattr(routing, "path", None),
        "workload.routing.fit": getattr(routing, "fit", None),
        "policies.placement.path": getattr(scenario.policies.placement, "path", None),
    }
    return {field: path for field, path in files.items() if isinstance(path, str)}


def _digest(path: str, field: str, cache: dict[str, str]) -> str:
    """The sha256 of a file the scenario names; a missing or unreadable one is a ConfigError."""
    if path not in cache:
        if not os.path.isfile(path):
            raise ConfigError(None, field, f"no such file {path}")
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
        except OSError as error:
            raise ConfigError(None, field, f"cannot read {path}: {error.strerror}") from None
        cache[path] = digest.hexdigest()
    return cache[path]


def point_id(scenario: Scenario, files: dict[str, str]) -> str:
    """The hash of everything that determines the point's result."""
    document: dict[str, Any] = {
        "moesim": __version__,
        "numpy": np.__version__,
        "scenario": scenario.model_dump(mode="json"),
        "files": files,
    }
    text = json.dumps(document, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def resolve_points(sweep: LoadedSweep) -> list[ResolvedPoint]:
    """Load and validate every point (the files it names exist and can be read, a trace's
    structure is sound), or stop with the first bad one before anything runs."""
    resolved, digests, read = [], {}, set()
    for point in sweep.points:
        try:
            scenario = load_scenario(sweep.base, point.overrides)
            named = _named_files(scenario)
            files = {str(Path(p).resolve()): _digest(p, f, digests) for f, p in named.items()}
            traces = {path for field, path in named.items() if field.startswith("workload.")}
            if not traces <= read:  # each trace file's structure read once
                check_trace_files(scenario)
                read |= traces
        except ConfigError as error:
            raise MoesimError(f"sweep point {point.index} ({point.describe()}): {error}") from None
        resolved.append(ResolvedPoint(point, point_id(scenario, files)))
    return resolved
