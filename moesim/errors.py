"""The one family of moesim errors; the CLI prints each as a single line and exits non-zero."""

from __future__ import annotations

__all__ = ["ConfigError", "MoesimError"]


class MoesimError(Exception):
    """Base of every error moesim reports to a user (bad input, impossible configuration)."""


class ConfigError(MoesimError):
    """A scenario, model card or hardware profile is wrong: names the file, the field and why."""

    def __init__(self, file: str | None, field: str | None, message: str) -> None:
        # The three parts are the exception's args, so that it can be rebuilt from them (SimPy
        # re-raises a process's exception as ``type(error)(*error.args)``).
        super().__init__(file, field, message)
        self.file = file
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message
