"""Load a scenario from YAML: resolve the model card and device profile, apply ``--set`` overrides.

Search order for a name such as ``model: paper-lm`` or ``device: a100-sxm4-80gb``: a path as
given (relative to the scenario file, then to the working directory); ``<dir>/models/`` (cards)
or ``<dir>/hardware_profiles/`` (profiles) for the scenario's folder and each folder above it;
the folders in ``$MOESIM_PATH``; the repository or installed package. Every error becomes a
``ConfigError`` naming the file, the dotted field and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from moesim.config.hardware import HardwareProfile
from moesim.config.model import ModelSpec
from moesim.config.scenario import Scenario
from moesim.config.strict_yaml import parse_yaml
from moesim.errors import ConfigError

__all__ = [
    "find_file",
    "load_hardware_profile",
    "load_model_card",
    "load_scenario",
    "parse_override",
    "read_yaml",
    "shipped_names",
]

_PACKAGE = Path(__file__).resolve().parent.parent
_SEARCH_DIRS = {
    "model": ("models", "scenarios/models"),
    "device": ("hardware_profiles",),
}
_BUILTIN = {
    "model": (_PACKAGE / "_data" / "models", _PACKAGE.parent / "scenarios" / "models"),
    "device": (_PACKAGE / "_data" / "hardware_profiles", _PACKAGE.parent / "hardware_profiles"),
}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or bad syntax is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), None, f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "cannot read: not UTF-8 text") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a YAML mapping at the top level")
    return data


def find_file(kind: str, name: str, near: Path | None) -> Path | None:
    """Resolve a card or profile ``name`` (see the module docstring for the search order)."""
    candidates: list[Path] = []
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") or as_path.parent != Path("."):
        if near is not None and not as_path.is_absolute():
            candidates.append(near / as_path)
        candidates.append(as_path)
    filename = name if as_path.suffix in (".yaml", ".yml") else f"{name}.yaml"
    if near is not None:
        for folder in (near, *near.parents):
            candidates += [folder / sub / filename for sub in _SEARCH_DIRS[kind]]
    for extra in os.environ.get("MOESIM_PATH", "").split(os.pathsep):
        if extra:
            candidates += [Path(extra) / sub / filename for sub in _SEARCH_DIRS[kind]]
    candidates += [folder / filename for folder in _BUILTIN[kind]]
    return next((path for path in candidates if path.is_file()), None)


def shipped_names(kind: str) -> list[str]:
    """The model cards (``kind="model"``) or hardware profiles (``"device"``) moesim ships."""
    return sorted(
        {
            path.stem
            for folder in _BUILTIN[kind]
            if folder.is_dir()
            for path in folder.glob("*.yaml")
        }
    )


def _available(kind: str) -> str:
    return ", ".join(shipped_names(kind)) or "none"


def _format(error: ValidationError) -> tuple[str, str]:
    """The first pydantic error as (dotted field, message)."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    # A discriminated union adds its tag (e.g. "synthetic") to the location: drop it.
    loc = [part for part in loc if part not in ("synthetic", "trace")]
    ctx = first.get("ctx") or {}
    if first["type"] == "policy" and ctx.get("field"):
        loc.append(ctx["field"])
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required field is missing"
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return ".".join(loc), message


def _validate(cls: type[BaseModel], data: Any, file: str, prefix: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        field, message = _format(error)
        raise ConfigError(
            file, ".".join(p for p in (prefix, field) if p) or None, message
        ) from None


def load_model_card(path: Path) -> ModelSpec:
    return _validate(ModelSpec, read_yaml(path), str(path))


def load_hardware_profile(path: Path) -> HardwareProfile:
    return _validate(HardwareProfile, read_yaml(path), str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``"workload.batch_size=128"`` → ``("workload.batch_size", 128)``; the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(None, "--set", f"expected KEY=VALUE with a dotted key, got {text!r}")
    try:
        parsed = parse_yaml(value, None) if value.strip() else ""
    except ConfigError as error:
        raise ConfigError(None, f"--set {key}", f"cannot parse {value!r}: {error}") from None
    return key.strip(), parsed


def _apply(data: dict[str, Any], key: str, value: Any) -> str | None:
    """Set ``data[a][b]... = value``; returns the dotted parent that is a string instead of a
    mapping (a reference to a card or profile not yet resolved), if one blocks the way."""
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str):
            return where
        if not isinstance(child, dict):
            raise ConfigError(None, f"--set {key}", f"{where} is not a mapping")
        node = child
    node[parts[-1]] = value
    return None


def _resolve(kind: str, ref: Any, near: Path, sources: dict[str, str], prefix: str) -> Any:
    if not isinstance(ref, str):
        return ref
    path = find_file(kind, ref, near)
    if path is None:
        what = "model card" if kind == "model" else "hardware profile"
        raise ConfigError(
            sources[""], prefix, f"no {what} named {ref!r} (available: {_available(kind)})"
        )
    sources[prefix] = str(path)
    return read_yaml(path)


def _mapping(value: object) -> dict:
    """``value`` where it is a mapping, else an empty one (validation reports it later)."""
    return value if isinstance(value, dict) else {}


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Load, resolve and validate a scenario file; ``overrides`` are ``KEY=VALUE`` strings."""
    path = Path(path)
    data = read_yaml(path)
    near = path.resolve().parent
    sources = {"": str(path)}
    parsed = [parse_override(text) for text in overrides or []]
    pending = [(key, value) for key, value in parsed if _apply(data, key, value) is not None]

    data["model"] = _resolve("model", data.get("model"), near, sources, "model")
    cluster = data.get("cluster")
    if isinstance(cluster, dict):
        pools = cluster.get("pools")
        pools = (
            [pool for pool in pools if isinstance(pool, dict)] if isinstance(pools, list) else []
        )
        named = [pool["device"] for pool in pools if "device" in pool]
        if "device" not in cluster and named:  # a cluster of pools may name devices per pool
            if len(named) < len(pools):
                raise ConfigError(
                    sources[""], "cluster.device", "required: a pool names no device of its own"
                )
            cluster["device"] = named[0]
        cluster["device"] = _resolve(
            "device", cluster.get("device"), near, sources, "cluster.device"
        )
        for index, pool in enumerate(pools):
            if "device" in pool:
                where = f"cluster.pools.{index}.device"
                pool["device"] = _resolve("device", pool["device"], near, sources, where)
    for key, value in pending:
        blocked = _apply(data, key, value)
        if blocked is not None:
            raise ConfigError(
                None, f"--set {key}", f"{blocked} is a string, not a mapping with fields"
            )
    routing = _mapping(data.get("workload")).get("routing")
    requests = _mapping(data.get("workload")).get("requests")
    placement = _mapping(data.get("policies")).get("placement")
    for section, field in (
        (routing, "workload.routing.path"),
        (routing, "workload.routing.fit"),
        (requests, "workload.requests.trace"),
        (placement, "policies.placement.path"),
    ):
        key = field.rpartition(".")[2]
        if isinstance(section, dict) and isinstance(section.get(key), str):  # relative to us
            named = Path(section[key])
            if not named.is_absolute() and (near / named).exists():
                section[key] = str(near / named)
            elif not named.exists():
                overridden = any(field == k or field.startswith(k + ".") for k, _ in parsed)
                raise ConfigError(
                    None if overridden else str(path),
                    f"--set {field}" if overridden else field,
                    f"no such file: {named}",
                )

    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        field, message = _format(error)
        for key, _ in parsed:
            if field == key or field.startswith(key + ".") or key.startswith(field + "."):
                raise ConfigError(None, f"--set {field}", message) from None
        owner = max((p for p in sources if p and field.startswith(p)), key=len, default="")
        file = sources[owner]
        if owner:
            field = field[len(owner) :].lstrip(".") or owner
        raise ConfigError(file, field or None, message) from None
