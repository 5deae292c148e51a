"""Write ``edgedet tune``'s recommendation into the config, keeping everything else byte for byte.

A careful line edit rather than a YAML round-trip: it changes only the ``path`` / ``backend`` lines
of the top-level ``model:`` block and ``count`` / ``threads_per_worker`` of ``workers:`` (adding
them, or the ``workers:`` block, when absent), so comments, key order, quoting and ``${ENV}``
references elsewhere stay exactly as the user wrote them, with no extra dependency. Flow-style
blocks (``workers: {count: 1}``) are rewritten as block style. The result is validated with the
daemon's own loader before it replaces the file (atomically, with a ``.bak`` copy beside it).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgedet.errors import ConfigError

_TOP = re.compile(r"^([A-Za-z_][\w-]*)\s*:(.*)$")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if re.fullmatch(r"[\w./@+-]+", text) and text.lower() not in {"null", "true", "false", "yes", "no", "~"}:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _blocks(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Top-level key -> (first line index, end index exclusive)."""
    starts = [(i, m.group(1)) for i, line in enumerate(lines) for m in [_TOP.match(line)] if m]
    out: dict[str, tuple[int, int]] = {}
    for n, (i, key) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        while end > i + 1 and not lines[end - 1].strip():
            end -= 1
        out[key] = (i, end)
    return out


def set_block(text: str, section: str, values: Mapping[str, Any]) -> str:
    """``text`` with ``section.<key>: value`` set for each of ``values`` (a top-level mapping block)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    blocks = _blocks(lines)
    if section not in blocks:
        body = "".join(f"  {k}: {_scalar(v)}\n" for k, v in values.items())
        sep = "" if not lines or not lines[-1].strip() else "\n"
        return "".join(lines) + f"{sep}{section}:\n{body}"
    start, end = blocks[section]
    head = _TOP.match(lines[start])
    rest = head.group(2).split("#", 1)[0].strip() if head else ""
    if rest.startswith("{"):  # flow style: rewrite as a block with the same keys
        import yaml

        try:
            existing = yaml.safe_load(rest) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{section}: cannot edit this flow mapping ({exc})") from None
        merged = {**existing, **values}
        new = [f"{section}:\n"] + [f"  {k}: {_scalar(v)}\n" for k, v in merged.items()]
        return "".join(lines[:start] + new + lines[start + 1:])
    if rest and not rest.startswith(("&", "!")):
        raise ConfigError(f"{section}: expected a mapping block to edit (got {rest!r})")
    indent = None
    for line in lines[start + 1:end]:
        if line.strip() and not line.lstrip().startswith("#"):
            indent = len(line) - len(line.lstrip(" "))
            break
    indent = indent or 2
    todo = dict(values)
    key_re = re.compile(rf"^ {{{indent}}}([A-Za-z_][\w-]*)\s*:(\s*)([^#\n]*?)(\s*#.*)?$")
    for i in range(start + 1, end):
        m = key_re.match(lines[i].rstrip("\n"))
        if m and m.group(1) in todo:
            comment = m.group(4) or ""
            lines[i] = f"{' ' * indent}{m.group(1)}: {_scalar(todo.pop(m.group(1)))}{comment}\n"
    extra = [f"{' ' * indent}{k}: {_scalar(v)}\n" for k, v in todo.items()]
    return "".join(lines[:end] + extra + lines[end:])


def write_recommendation(config: Path, model: Mapping[str, Any], workers: Mapping[str, Any]) -> Path:
    """Edit ``config`` in place (``.bak`` beside it); ConfigError if the result would not load."""
    from edgedet.config import load_config

    text = config.read_text(encoding="utf-8")
    new = set_block(set_block(text, "model", model), "workers", workers)
    fd, tmp = tempfile.mkstemp(prefix=f".{config.name}.", suffix=".tmp", dir=config.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        load_config(tmp)  # the daemon's own validation, with line numbers, before anything changes
        shutil.copy2(config, config.with_name(config.name + ".bak"))
        shutil.copymode(config, tmp)
        os.replace(tmp, config)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return config.with_name(config.name + ".bak")
