"""Config problems: where each one is in the YAML file, how values appear in messages, the list.

One :class:`Ctx` lives for one parse. Every stage (YAML conversion, the builder, the sections'
cross-field rules) adds problems to it instead of raising, so that ``parse_config`` reports all of
them at once, sorted by line::

    config.yaml:12: cameras.gate.url: expected rtsp://, http(s)://, a file, ... (got 'rstp://cam/1')

A value whose problem is already reported becomes :data:`INVALID`, which every later stage passes
through silently (one mistake, one message).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedet.redact import mask_url, redact, spellings

# The key path of a value: ("cameras", "gate", "zones", "door", 2) is cameras.gate.zones.door[2].
PathT = tuple[str | int, ...]


class _InvalidType:
    """Marks a value whose problem is already reported; builders pass it through silently."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _InvalidType()


class EnvStr(str):
    """A string that came from ``${VAR}`` substitution: may also fill number / bool keys."""

    __slots__ = ()


class Bad(Exception):
    """A problem with one value; the message is complete."""


class Mismatch(Exception):
    """A value of the wrong type; rendered with the value hidden for secret keys."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value

    def render(self, secret: bool = False) -> str:
        got = describe(self.value) if secret else show(self.value)
        return f"expected {self.expected} (got {got})"


def show(value: Any) -> str:
    """A value as it appears in a message: short, one line, YAML spelling for scalars."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = mask_url(value)  # before shortening, so no part of a password survives
        text = text if len(text) <= 80 else text[:77] + "..."
        suffix = " from the environment" if isinstance(value, EnvStr) else ""
        return repr(text) + suffix
    if isinstance(value, (int, float)):
        return repr(value)
    return describe(value)


def describe(value: Any) -> str:
    """The kind of a value, without the value itself (for secrets and containers)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def dotted(path: PathT) -> str:
    """``("cameras", "gate", "masks", 0)`` -> ``cameras.gate.masks[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def one_line(text: object) -> str:
    """All of a (possibly multi-line) text on one line, runs of whitespace collapsed."""
    return " ".join(str(text).split())


def unknown_key(key: str, names: Sequence[str]) -> str:
    """The message for a key that is not one of ``names``, with a did-you-mean hint."""
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(names)}"
    return f"unknown key {key!r} ({hint})"


@dataclass
class Ctx:
    """State of one parse: where files are looked up, node lines, the problems found so far."""

    name: str
    base_dir: Path | None
    check_files: bool
    lines: dict[PathT, int] = field(default_factory=dict)
    key_lines: dict[PathT, int] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)  # values no message may show (URL passwords, tokens)

    def line_of(self, path: PathT) -> int:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 1

    def key_line_of(self, path: PathT) -> int:
        """The line of the key that names ``path`` (where a mapping value is reported)."""
        return self.key_lines.get(path) or self.line_of(path)

    def add(self, path: PathT, message: str, line: int | None = None) -> None:
        line = self.key_line_of(path) if line is None else line
        where = f"{self.name}:{line}: {dotted(path)}:" if path else f"{self.name}:{line}:"
        self.problems.append((line, f"{where} {message}"))

    def rendered(self) -> list[str]:
        """The problems sorted by line, every known secret masked (in any spelling).

        Secrets of one or two characters are left to :func:`show` (which masks them inside a URL):
        scrubbing every "p" from a message would make it unreadable."""
        hidden = {spelling for secret in self.secrets if len(secret) >= 3 for spelling in spellings(secret)}
        return [redact(text, hidden) for _, text in sorted(self.problems, key=lambda p: p[0])]
