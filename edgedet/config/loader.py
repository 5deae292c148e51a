"""Reading a config: YAML text -> plain values (with line numbers, ``${ENV}`` substituted) -> Config.

``parse_config`` composes the YAML into nodes (so every key and value keeps its line), converts
them to plain values while substituting ``${VAR}`` / ``${VAR:-default}`` / ``$${``, and hands them
to the builder. ``load_config`` reads the file first; ``dump_config`` writes a Config back as YAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgedet.config.builder import build_section
from edgedet.config.problems import INVALID, Ctx, EnvStr, PathT, one_line
from edgedet.config.sections import Config
from edgedet.errors import ConfigError
from edgedet.redact import url_secrets

# --------------------------------------------------------------------------- YAML nodes -> values

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VAR_RE = re.compile(r"\$(\$?)\{([^{}]*)\}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY_RE = re.compile(r"pass|pwd|token|secret", re.I)
# How many values YAML aliases may add to a document (beyond the nodes written out in it). A real
# config reuses a zone or a camera block a few times (hundreds of values); an alias bomb of 400 bytes
# ("billion laughs") expands to millions and would take minutes and gigabytes to convert.
MAX_ALIAS_VALUES = 100_000
MAX_CONFIG_BYTES = 8 * 2**20
# How deep YAML may nest (a config needs 6 levels: cameras.gate.zones.door[0][0]). PyYAML's scanner
# slows down with the square of the flow depth: 5000 '[' (5 KB) would take half a minute.
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a document nested deeper than :data:`MAX_DEPTH` as it composes."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name
        self.depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"{self.name}:{line}: YAML nested more than {MAX_DEPTH} levels deep "
                                  "(a config needs a few)")
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self.depth -= 1


def _reason(exc: yaml.YAMLError) -> str:
    """What PyYAML says is wrong, on one line (without its position)."""
    return one_line(exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc)


def _substitute(text: str, path: PathT, ctx: Ctx) -> Any:
    if "$" not in text:
        return text
    problems: list[str] = []
    used_env = False

    def replace(m: re.Match[str]) -> str:
        nonlocal used_env
        escaped, inner = m.group(1), m.group(2)
        if escaped:
            return "${" + inner + "}"
        name, sep, default = inner.partition(":-")
        if not _ENV_NAME_RE.fullmatch(name):
            problems.append(f"bad variable reference '${{{inner}}}' (use ${{NAME}} or ${{NAME:-default}})")
            return ""
        used_env = True
        value = os.environ.get(name)
        if sep and not value:
            return default
        if value is None:
            problems.append(f"environment variable {name} is not set")
            return ""
        return value

    result = _VAR_RE.sub(replace, text)
    for problem in problems:
        ctx.add(path, problem)
    if problems:
        return INVALID
    return EnvStr(result) if used_env else result


class _Converter:
    """Turns the composed node tree into plain values, recording each key path's line."""

    def __init__(self, ctx: Ctx, loader: yaml.SafeLoader) -> None:
        self.ctx = ctx
        self.loader = loader
        self.active: set[int] = set()
        self.flattened: set[int] = set()

    def value(self, node: Node, path: PathT) -> Any:
        self.ctx.lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            if node.tag == _STR_TAG:
                text = _substitute(node.value, path, self.ctx)
                if isinstance(text, str):
                    self._note_secrets(text, path)
                return text
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                self.ctx.add(path, f"cannot read this value: {_reason(exc)}")
                return INVALID
        if id(node) in self.active:
            self.ctx.add(path, "recursive YAML alias")
            return INVALID
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
                return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
                return self.mapping(node, path)
            self.ctx.add(path, f"unsupported YAML tag {node.tag}")
            return INVALID
        finally:
            self.active.discard(id(node))

    def _note_secrets(self, text: str, path: PathT) -> None:
        """Remember the secrets in a value, so that no problem message shows them (whatever its shape)."""
        self.ctx.secrets.update(url_secrets(text))
        key = path[-1] if path else ""
        if isinstance(key, str) and _SECRET_KEY_RE.search(key) and not key.endswith("_file"):
            self.ctx.secrets.add(text)

    def mapping(self, node: MappingNode, path: PathT) -> Any:
        ctx = self.ctx
        if id(node) not in self.flattened:
            first: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in first:
                    ctx.add((*path, key_node.value),
                            f"duplicate key (first set on line {first[key_node.value]})", line)
                first.setdefault(key_node.value, line)
            try:
                self.loader.flatten_mapping(node)
            except yaml.YAMLError as exc:
                ctx.add(path, f"bad merge key '<<': {_reason(exc)}")
                return INVALID
            self.flattened.add(id(node))
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                ctx.add(path, "keys must be plain names, not lists or mappings",
                        key_node.start_mark.line + 1)
                continue
            key_path = (*path, key_node.value)
            ctx.key_lines[key_path] = key_node.start_mark.line + 1
            out[key_node.value] = self.value(value_node, key_path)
        return out


def _check_expansion(root: Node, name: str, limit: int = MAX_ALIAS_VALUES) -> None:
    """Raise ConfigError when aliases expand the document by more than ``limit`` values.

    Counts the values the conversion would visit (every alias expanded, merge keys included) with
    one memo per node, so the count itself takes time linear in the document, not in its expansion.
    """
    written: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in written:
            continue
        written.add(id(node))
        if isinstance(node, SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, MappingNode):
            todo.extend(n for pair in node.value for n in pair)
    budget = len(written) + limit
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        total = 1
        if key not in active and isinstance(node, (SequenceNode, MappingNode)):  # recursion: reported later
            active.add(key)
            children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
            for child in children:
                total += size(child)
                if total > budget:
                    raise ConfigError(
                        f"{name}:{node.start_mark.line + 1}: YAML aliases expand this value to more than "
                        f"{limit} values (an alias bomb?); write the values out or use fewer aliases"
                    )
            active.discard(key)
            sizes[key] = total
        return total

    size(root)


# --------------------------------------------------------------------------- entry points


def _yaml_problem(name: str, exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{name}: malformed YAML: {one_line(exc)}"
    mark = exc.problem_mark or exc.context_mark
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = one_line(exc.problem or "")
    context = one_line(exc.context or "")
    cm = exc.context_mark
    if context and cm is not None and mark is not None and (cm.line, cm.column) != (mark.line, mark.column):
        context += f" at line {cm.line + 1}, column {cm.column + 1}"
    if problem.startswith("but ") and context:  # "expected X, but found Y" split in two by PyYAML
        message = f"{context}, {problem}"
    elif problem and context:
        message = f"{problem} ({context})"
    else:
        message = problem or context or "unknown error"
    return f"{where}: malformed YAML: {message}"


def parse_config(
    text: str, name: str = "<string>", base_dir: Path | None = None, *, check_files: bool = True
) -> Config:
    """Parse YAML text into a Config; raise ConfigError listing every problem.

    ``name`` prefixes every problem; relative paths are looked up in ``base_dir`` (if given) and
    then the working directory. ``check_files=False`` skips the existence checks of files (for
    tools and tests); paths are still resolved.
    """
    ctx = Ctx(name=name, base_dir=base_dir, check_files=check_files)
    try:
        loader = _Loader(text, name)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(name, exc)) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_problem(name, exc)) from None
        if root is None:
            raise ConfigError(f"{name}:1: the file is empty (expected a mapping with 'cameras' and 'model')")
        if not isinstance(root, MappingNode) or root.tag != _MAP_TAG:
            got = "a list" if isinstance(root, SequenceNode) else "a single value"
            raise ConfigError(
                f"{name}:{root.start_mark.line + 1}: expected a mapping at the top level "
                f"(with 'cameras' and 'model'), got {got}"
            )
        _check_expansion(root, name)
        data = _Converter(ctx, loader).value(root, ())
        config = build_section(Config, data, (), ctx) if data is not INVALID else INVALID
    except RecursionError:  # a builder or check recursing on what the depth bound let through
        raise ConfigError(f"{name}: YAML nested too deeply (a config needs a few levels)") from None
    finally:
        loader.dispose()
    if ctx.problems or not isinstance(config, Config):
        raise ConfigError(ctx.rendered() or [f"{name}: invalid configuration"])
    return config


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read and validate a YAML config file; raise ConfigError listing every problem."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{name}: config file is larger than {MAX_CONFIG_BYTES // 2**20} MiB "
                              "(is it the right file?)")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config file: {exc.strerror or exc}") from None
    return parse_config(text, name, Path(os.path.abspath(name)).parent, check_files=check_files)


def dump_config(config: Config, masked: bool = True) -> str:
    """The normalised config as YAML (for ``edgedet check-config``); secrets masked by default."""
    text: str = yaml.safe_dump(config.to_dict(masked), sort_keys=False, default_flow_style=False,
                               allow_unicode=True)
    return text
