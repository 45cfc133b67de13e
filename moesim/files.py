"""Writing files: atomically (a reader sees the old file or the new one, never half of one), as
standard JSON, and into folders checked before the work that fills them."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError

__all__ = ["json_text", "publish", "writable_dir"]


def publish(temporary: str | Path, target: str | Path) -> None:
    """Give ``temporary`` the permissions a plain ``open()`` would, then move it onto
    ``target`` in one step (``tempfile.mkstemp`` creates files readable by the owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)


def _non_finite(value: Any, where: str) -> str | None:
    """The dotted path of the first NaN or infinity in ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)"
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            found = _non_finite(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    return None


def json_text(document: Any, what: str, indent: int | None = 1) -> str:
    """``document`` as standard JSON (RFC 8259: no NaN or Infinity); a non-finite number is a
    MoesimError naming ``what`` and the field."""
    try:
        return json.dumps(document, indent=indent, allow_nan=False)
    except ValueError:
        field = _non_finite(document, "")
        raise MoesimError(
            f"{what}: {field} is not a finite number; JSON cannot hold it (refusing to write "
            "non-standard JSON)"
        ) from None


def writable_dir(folder: str | Path, what: str) -> Path:
    """``folder``, created if missing and checked writable by creating a file in it, so that a
    long run does not fail only when it writes its results; ``what`` starts a message."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise MoesimError(f"{what}: {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".moesim-write-check.")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise MoesimError(f"{what}: cannot write into {path}: {error.strerror}") from None
    return path
