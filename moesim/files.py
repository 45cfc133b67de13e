"""Writing files atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["publish"]


def publish(temporary: str | Path, target: str | Path) -> None:
    """Give ``temporary`` the permissions a plain ``open()`` would, then move it onto
    ``target`` in one step (``tempfile.mkstemp`` creates files readable by the owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)
