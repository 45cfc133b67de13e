"""``moesim list``: the shipped model cards and hardware profiles, and the registered policies,
one per line (names a scenario can use as they are)."""

from __future__ import annotations

import argparse

from moesim.config import CACHE, GATING, PLACEMENT, shipped_names

__all__ = ["add_list_parser", "listed", "run_list"]

_REGISTRIES = (GATING, PLACEMENT, CACHE)


def add_list_parser(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="shipped models and profiles, known policies")
    listing.add_argument(
        "what",
        choices=("models", "profiles", "policies"),
        help="models: model cards; profiles: hardware profiles; policies: '<family> <name>'",
    )


def listed(what: str) -> list[str]:
    """The lines ``moesim list what`` prints."""
    if what == "models":
        return shipped_names("model")
    if what == "profiles":
        return shipped_names("device")
    return [f"{registry.family} {name}" for registry in _REGISTRIES for name in registry.names()]


def run_list(args: argparse.Namespace) -> None:
    for line in listed(args.what):
        print(line)
