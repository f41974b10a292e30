"""A strict YAML reader that keeps line marks: nodes in, typed values out.

The config loader needs every problem placed as ``FILE:LINE: key.path: what
is wrong``, and needs all of them at once rather than the first. PyYAML's
plain data has lost the lines by the time a value is checked, so this module
works on its node tree instead: :func:`compose` turns text into nodes (a YAML
syntax error becomes a placed :class:`~certgate.errors.ConfigError`), and a
:class:`Reader` converts one node at a time into a string, a number, a
duration, a size, an enum member or a path, appending a placed problem and
returning None when the node is not what was asked for.

Nothing here knows what a certgate config looks like (that is
:mod:`certgate.config.builder` and :mod:`certgate.config.routes`) and nothing
here reads a file other than the config text it is given (files the config
names are checked in :mod:`certgate.config.diskchecks`), so the same reader
serves any strict YAML document with the same error format.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from certgate.errors import ConfigError

T = TypeVar("T")
Node = yaml.Node

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def compose(text: str, source: str) -> Node:
    """The node tree of ``text``; a syntax error or an empty file is raised, placed.

    Raises:
        ConfigError: ``SOURCE:LINE: (yaml): reason`` for a YAML error, or
            ``SOURCE:1: (file): the file is empty``.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}:{line}: (yaml): {reason}"]) from exc
    if root is None:
        raise ConfigError([f"{source}:1: (file): the file is empty"])
    return root


class Reader:
    """Collects problems while converting nodes; methods return None on error."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []
        self._constructor = yaml.SafeLoader("")
        self._unreadable: set[int] = set()  # ids of nodes already reported as unreadable

    def problem(self, node: Node | None, path: str, message: str) -> None:
        if node is not None and id(node) in self._unreadable:
            return  # said once: "expected a string" on top would only confuse
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.source}:{line}: {path}: {message}")

    def scalar(self, node: Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "expected a single value")
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # An explicit tag the safe loader cannot build (!!python/name:...,
            # !!binary with bad base64, !!int abc): the config's mistake, so a
            # FILE:LINE problem like any other, not a traceback.
            reason = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            self.problem(node, path, f"cannot read this value: {reason.splitlines()[0]}")
            self._unreadable.add(id(node))
            return None

    def mapping(
        self, node: Node, path: str, allowed: set[str], required: tuple[str, ...] = ()
    ) -> dict[str, Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "expected a mapping of keys")
            return None
        found: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path)
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.problem(key_node, where, "keys must be strings")
            elif key in found:
                self.problem(key_node, where, "duplicate key")
            elif key not in allowed:
                hint = closest(key, allowed)
                extra = f" (did you mean '{hint}'?)" if hint else ""
                self.problem(key_node, where, f"unknown key{extra}")
            else:
                found[key] = value_node
        for key in required:
            if key not in found:
                self.problem(node, f"{path}.{key}" if path else key, "required key is missing")
        return found

    def sequence(self, node: Node, path: str, *, allow_scalar: bool = False) -> list[Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if allow_scalar and isinstance(node, yaml.ScalarNode):
            return [node]
        self.problem(node, path, "expected a list")
        return []

    def string(self, node: Node, path: str) -> str | None:
        value = self.scalar(node, path)
        if value is None:
            if isinstance(node, yaml.ScalarNode):
                self.problem(node, path, "expected a string, got nothing")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(node, path, "expected a string")
            return None
        return str(value)

    def boolean(self, node: Node, path: str) -> bool | None:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            self.problem(node, path, "expected true or false")
            return None
        return value

    def integer(self, node: Node, path: str, low: int, high: int) -> int | None:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(node, path, "expected a whole number")
            return None
        if not low <= value <= high:
            self.problem(node, path, f"must be between {low} and {high}")
            return None
        return value

    def duration(self, node: Node, path: str) -> float | None:
        value = self.scalar(node, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value)) if isinstance(value, str) else None
            if match is None:
                self.problem(node, path, "expected a duration such as 30, 30s, 5m, 2h or 500ms")
                return None
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds <= 0:
            self.problem(node, path, "must be greater than zero")
            return None
        return seconds

    def size(self, node: Node, path: str, *, allow_unlimited: bool = False) -> int | None:
        value = self.scalar(node, path)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if isinstance(value, str):
            if allow_unlimited and value.strip().lower() in {"unlimited", "none", "0"}:
                return None
            match = _SIZE.match(value)
            if match is not None:
                unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
                amount = int(match.group(1)) * _SIZE_UNITS[unit]
                if amount > 0:
                    return amount
        allowed = " or 'unlimited'" if allow_unlimited else ""
        self.problem(node, path, f"expected a size such as 1048576, 512K, 10M or 2G{allowed}")
        return None

    def choice(self, node: Node, path: str, enum_type: type[T]) -> T | None:
        value = self.scalar(node, path)
        options = [member.value for member in enum_type]  # type: ignore[attr-defined]
        if value is False and "off" in options:
            value = "off"  # YAML 1.1 reads a bare `off` as false
        for member in enum_type:  # type: ignore[attr-defined]
            if member.value == value:
                return member  # type: ignore[no-any-return]
        self.problem(node, path, f"must be one of: {', '.join(options)}")
        return None

    def path(self, node: Node, where: str) -> Path | None:
        """A path as written, ``~`` expanded, relative ones against the config's folder.

        Only the name is built here; whether it exists is
        :func:`certgate.config.diskchecks.existing_file`'s question.
        """
        text = self.string(node, where)
        if text is None:
            return None
        expanded = Path(os.path.expanduser(text))
        return expanded if expanded.is_absolute() else self.base_dir / expanded


def closest(key: str, allowed: set[str]) -> str | None:
    """The allowed key an unknown one was probably meant to be, for "did you mean"."""
    import difflib  # only a config with an unknown key pays for this import

    matches = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return matches[0] if matches else None
