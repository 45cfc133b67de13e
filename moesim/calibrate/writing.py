"""Writing a calibrated profile as YAML under a header comment: device, date, command."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moesim.config import HardwareProfile
from moesim.errors import MoesimError

__all__ = ["write_profile"]


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of numbers on one line; repeated objects written out again."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(isinstance(item, int | float | str) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def _header(profile: dict[str, Any]) -> str:
    """The comment on top; the command is the part of a provenance ``ref`` before ``"; "``."""
    origin = profile["compute"]["provenance"]
    command = str(origin["ref"]).split("; ", 1)[0]
    return (
        "# Hardware profile calibrated by moesim.\n"
        f"# device: {origin.get('measured_on')}\n"
        f"# date: {origin.get('date')}\n"
        f"# command: {command}\n"
    )


def write_profile(profile: dict[str, Any], path: Path) -> None:
    """Validate ``profile`` and write it to ``path`` as YAML under a header comment (device,
    date, command). The file is replaced whole or not at all."""
    try:
        HardwareProfile.model_validate(profile)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MoesimError(f"calibrated profile is invalid at {where}: {first['msg']}") from None
    text = _header(profile) + yaml.dump(
        profile, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
    )
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise MoesimError(f"cannot write {path}: {error.strerror}") from None
