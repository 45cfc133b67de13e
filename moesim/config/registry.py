"""Registries of named policies: a YAML ``name`` picks a class, its ``Params`` validate the rest.

A policy module registers itself with a decorator; the scenario schema validates
``policies.<family>`` against whatever is registered. A duplicate name is an error.

To add a policy: write one ``Policy`` subclass with a nested ``Params(PolicyParams)`` model and
decorate it with ``@GATING.register("name")`` (or the family's registry); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from moesim.config.fields import Frozen

__all__ = [
    "CACHE",
    "GATING",
    "OVERLAP",
    "PLACEMENT",
    "SCHEDULER",
    "Policy",
    "PolicyParams",
    "Registry",
]

T = TypeVar("T")


class PolicyParams(Frozen):
    """Parameters of one policy; subclasses add their fields, ``name`` selects the class."""

    name: str


class Policy:
    """Base of a policy class: keeps its validated ``Params``; subclasses add the decision."""

    def __init__(self, params: PolicyParams) -> None:
        self.params = params


class Registry(Generic[T]):
    """Name → policy class for one family (gating, cache, placement, scheduler)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.family} policy {name!r} is registered twice")
            params = getattr(cls, "Params", None)
            if not (isinstance(params, type) and issubclass(params, PolicyParams)):
                raise TypeError(f"{cls.__name__} needs a nested Params(PolicyParams) class")
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._classes)

    def params_class(self, name: str) -> type[PolicyParams]:
        if name not in self._classes:
            known = ", ".join(self.names()) or "none registered"
            raise ValueError(f"unknown {self.family} policy {name!r} (known: {known})")
        return self._classes[name].Params  # type: ignore[attr-defined]

    def validate(self, raw: Any) -> PolicyParams:
        """Validate a YAML mapping ``{name: ..., **params}`` into that policy's Params."""
        if isinstance(raw, PolicyParams):
            return raw
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"expected a mapping with a 'name' of a {self.family} policy")
        if not isinstance(raw["name"], str):
            known = ", ".join(self.names()) or "none registered"
            raise ValueError(
                f"name: expected one {self.family} policy name ({known}), got {raw['name']!r}"
            )
        return self.params_class(raw["name"]).model_validate(raw)

    def build(self, params: PolicyParams) -> T:
        """An instance of the policy that ``params`` names, configured by them."""
        return self._classes[params.name](params)  # type: ignore[call-arg]


GATING: Registry[Any] = Registry("gating")
PLACEMENT: Registry[Any] = Registry("placement")
CACHE: Registry[Any] = Registry("cache")
SCHEDULER: Registry[Any] = Registry("scheduler")
OVERLAP: Registry[Any] = Registry("overlap")
