"""The one YAML parser of everything moesim reads: safe, and strict where PyYAML is lenient.

A key given twice in a mapping is an error naming the key and both lines (PyYAML keeps the
last one silently). A document nested deeper than ``MAX_DEPTH`` levels, one whose aliases expand
to more than ``MAX_NODES`` values (an "alias bomb") and a recursive alias are refused before
anything is built from them, so that no reader of the data recurses or expands without bound.
"""

from __future__ import annotations

from typing import Any

import yaml

from moesim.errors import ConfigError

__all__ = ["MAX_DEPTH", "MAX_NODES", "StrictLoader", "parse_yaml"]

MAX_DEPTH = 64  # levels of nesting; a scenario or sweep uses fewer than 10
MAX_NODES = 1_000_000  # scalars, lists and mappings after expanding aliases


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a duplicate key in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} (first on line {first})",
                    problem_mark=key_node.start_mark,
                )
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node) -> str | None:
    """Why the document is refused (too deep, too large once expanded, recursive), or None."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _Refused("an alias refers to a value that contains it (a recursive alias)")
        total = 1
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            open_nodes.add(id(node))
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [child for pair in node.value for child in pair]
            )
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_NODES:
                    raise _Refused(
                        f"expands to more than {MAX_NODES:,} values (aliases repeat what they "
                        "name; write the document out, or make it smaller)"
                    )
            open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    try:
        size(root, 1)
    except _Refused as refused:
        return str(refused)
    return None


class _Refused(Exception):
    pass


def parse_yaml(text: str, file: str | None) -> Any:
    """The data of the YAML document ``text`` (from ``file``, for messages); bad syntax, a
    duplicate key, excessive nesting or expansion is a ConfigError."""
    loader = None
    try:
        loader = StrictLoader(text)  # reads the text: refuses characters YAML does not allow
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(file, None, f"nested deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        why = _check_size(node)
        if why is not None:
            raise ConfigError(file, None, why)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(file, None, f"{where}{problem}") from None
    finally:
        if loader is not None:
            loader.dispose()
