"""The one family of moesim errors; the CLI prints each as a single line and exits non-zero."""

from __future__ import annotations

__all__ = ["ConfigError", "MoesimError"]


class MoesimError(Exception):
    """Base of every error moesim reports to a user (bad input, impossible configuration)."""


class ConfigError(MoesimError):
    """A scenario, model card or hardware profile is wrong: names the file, the field and why."""

    def __init__(self, file: str | None, field: str | None, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        where = ": ".join(part for part in (file, field) if part)
        super().__init__(f"{where}: {message}" if where else message)
