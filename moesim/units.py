"""Unit strings ("80GiB", "900GB/s", "312TFLOPS", "5us", "200Gb/s") to plain SI numbers.

Sizes become bytes, bandwidths bytes per second, compute rates FLOP/s, durations seconds.
A plain number is taken as already in SI units. Decimal prefixes are powers of 1000, binary
prefixes (KiB, MiB, GiB, TiB) powers of 1024; a lowercase ``b`` in a rate means bits.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["Quantity", "parse_quantity"]

Quantity = Literal["bytes", "bytes_per_s", "flops_per_s", "seconds"]

_DECIMAL = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-zµ/]*)\s*$")


def _prefix(prefix: str) -> float | None:
    if prefix in _BINARY:
        return _BINARY[prefix]
    return _DECIMAL.get(prefix)


def _scale(unit: str, kind: Quantity) -> float | None:
    """Multiplier that turns ``unit`` into the SI base of ``kind``, or None if it does not fit."""
    if unit == "":
        return 1.0
    if kind == "seconds":
        return _SECONDS.get(unit)
    if kind == "flops_per_s":
        match = re.fullmatch(r"([kKMGTP]?)(?:FLOPS|FLOP/s|flops|flop/s)", unit)
        return _prefix(match.group(1)) if match else None
    if kind == "bytes":
        match = re.fullmatch(r"([kKMGTP]i?|)B", unit)
        return _prefix(match.group(1)) if match else None
    match = re.fullmatch(r"([kKMGTP]i?|)(B|b)(?:/s|ps)", unit)
    if not match:
        return None
    scale = _prefix(match.group(1))
    if scale is None:
        return None
    return scale / 8.0 if match.group(2) == "b" else scale


_EXAMPLES = {
    "bytes": '"80GiB", "16MB" or a number of bytes',
    "bytes_per_s": '"900GB/s", "200Gb/s" or a number of bytes per second',
    "flops_per_s": '"312TFLOPS" or a number of FLOP/s',
    "seconds": '"5us", "1.5ms" or a number of seconds',
}


def parse_quantity(value: object, kind: Quantity) -> float:
    """Return ``value`` in SI units of ``kind``; raise ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_EXAMPLES[kind]}, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            scale = _scale(match.group(2), kind)
            if scale is not None:
                return float(match.group(1)) * scale
    raise ValueError(f"expected {_EXAMPLES[kind]}, got {value!r}")
