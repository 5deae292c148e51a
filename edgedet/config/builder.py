"""The generic builder: plain YAML values -> frozen section dataclasses, over ``dataclasses.fields()``.

The builder knows types, never particular sections. What a section or value type needs beyond
its field types it says itself, through three hooks:

- field metadata (:func:`meta`): a ``check``, a ``parse`` / ``build`` that replaces the
  type-driven build, ``normalise``, and ``secret`` / ``url`` for masking;
- :class:`Section`: ``validate()`` (cross-field rules) and ``finish(ctx, path)`` (work once the
  section is consistent, e.g. reading a file it names);
- :class:`YamlValue`: a value type that is not a section builds itself with ``from_yaml``.

Problems are added to the :class:`~edgedet.config.problems.Ctx` at their own path; a value that
failed becomes ``INVALID`` and its section is not built.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from edgedet.config.fields import name_key
from edgedet.config.problems import INVALID, Bad, Ctx, EnvStr, Mismatch, PathT, show, unknown_key
from edgedet.redact import MASK, mask_url


def meta(
    *,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[Any, Ctx], Any] | None = None,
    build: Callable[[Any, PathT, Ctx], Any] | None = None,
    normalise: Callable[[str], str] | None = None,
    secret: bool = False,
    url: bool = False,
) -> dict[str, Any]:
    """Field metadata read by the builder (checks run after the type is right).

    ``parse(value, ctx)`` replaces the type-driven build of a scalar-like value; ``build(value,
    path, ctx)`` does the same for a container whose nested problems need their own paths.
    """
    return {"check": check, "parse": parse, "build": build, "normalise": normalise, "secret": secret,
            "url": url}


class YamlValue:
    """A value type that is not a section but builds itself from YAML (with nested paths)."""

    __slots__ = ()

    @classmethod
    def from_yaml(cls, value: Any, path: PathT, ctx: Ctx) -> Any:
        """The built value, or ``INVALID`` with the problems added to ``ctx`` (or raise Bad/Mismatch)."""
        raise NotImplementedError

    def to_plain(self) -> Any:
        """The value in plain types, as written in YAML (for ``to_dict()``)."""
        raise NotImplementedError


class Section:
    """Shared behaviour of config sections: cross-field rules, plain-dict view, masked repr."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def validate(self) -> Sequence[tuple[str | tuple[str, ...], str]]:
        """Cross-field rules: ``(key, message)`` pairs, empty when the section is consistent.

        ``key`` is a key of this section, or a tuple of keys for a value nested deeper.
        """
        return []

    def finish(self, ctx: Ctx, path: PathT) -> Any:
        """Called once ``validate()`` found nothing: the final section, or ``INVALID`` with the
        problems added to ``ctx``."""
        return self

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        """Plain types only; secrets become ``***`` and URL passwords are masked unless asked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name), f.metadata, masked)
        return out

    def __repr__(self) -> str:
        parts = [f"{f.name}={_plain(getattr(self, f.name), f.metadata, True, keep=True)!r}"
                 for f in dataclasses.fields(self)]
        return f"{type(self).__name__}({', '.join(parts)})"


def _plain(value: Any, field_meta: Mapping[str, Any], masked: bool, keep: bool = False) -> Any:
    if value is None:
        return None
    if masked and field_meta.get("secret"):
        return MASK
    if masked and field_meta.get("url") and isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Section):
        return value if keep else value.to_dict(masked)
    if isinstance(value, YamlValue):
        return value if keep else value.to_plain()
    if isinstance(value, dict):
        return {k: _plain(v, {}, masked, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, {}, masked, keep) for v in value]
    return value


# --------------------------------------------------------------------------- types

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Section)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if get_origin(tp) in (Union, types.UnionType):
        return get_args(tp)
    return None


def _expected(tp: Any) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in words:
        return words[tp]
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is dict or _is_section(tp):
        return "a mapping"
    args = _union_args(tp)
    if args is not None:
        return " or ".join(_expected(a) for a in args if a is not type(None))
    return str(tp)


def _fits(tp: Any, value: Any) -> bool:
    if tp is str:
        return isinstance(value, str)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    return False


def scalar(tp: Any, value: Any) -> Any:
    """``value`` as a ``str`` / ``int`` / ``float`` / ``bool``; environment strings may fill any."""
    if _fits(tp, value):
        return float(value) if tp is float else (str(value) if tp is str else value)
    if isinstance(value, EnvStr):
        text = value.strip()
        if tp is int and re.fullmatch(r"[-+]?[0-9]+", text):
            return int(text)
        if tp is float:
            try:
                return float(text)
            except ValueError:
                pass
        if tp is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
    raise Mismatch(_expected(tp), value)


# --------------------------------------------------------------------------- building


def _build(tp: Any, value: Any, path: PathT, ctx: Ctx) -> Any:
    """Build a value of type ``tp``; raises Bad/Mismatch for this value, records nested ones."""
    if value is INVALID:
        return INVALID
    args = _union_args(tp)
    if args is not None:
        arms = [a for a in args if a is not type(None)]
        if value is None and len(arms) < len(args):
            return None
        if len(arms) == 1:
            return _build(arms[0], value, path, ctx)
        for arm in arms:
            if _fits(arm, value):
                return _build(arm, value, path, ctx)
        raise Mismatch(_expected(tp), value)
    origin = get_origin(tp)
    if origin is Literal:
        options = get_args(tp)
        if isinstance(value, str) and value in options:
            return str(value)
        raise Bad(f"expected one of {', '.join(map(repr, options))} (got {show(value)})")
    if origin is list:
        if not isinstance(value, list):
            raise Mismatch("a list", value)
        items = [element(get_args(tp)[0], item, (*path, i), ctx) for i, item in enumerate(value)]
        return INVALID if any(item is INVALID for item in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            raise Mismatch("a mapping", value)
        out: dict[str, Any] = {}
        for name, item in value.items():
            problem = name_key(name)
            if problem:
                ctx.add((*path, name), problem, ctx.key_line_of((*path, name)))
                out[name] = INVALID
            else:
                out[name] = element(get_args(tp)[1], item, (*path, name), ctx)
        return INVALID if any(item is INVALID for item in out.values()) else out
    if _is_section(tp):
        return build_section(tp, {} if value is None else value, path, ctx)
    if isinstance(tp, type) and issubclass(tp, YamlValue):
        return tp.from_yaml(value, path, ctx)
    return scalar(tp, value)


def element(tp: Any, value: Any, path: PathT, ctx: Ctx) -> Any:
    """Build one list item / mapping value of type ``tp``: the value, or INVALID (problem added)."""
    try:
        return _build(tp, value, path, ctx)
    except Mismatch as exc:
        ctx.add(path, exc.render())
    except Bad as exc:
        ctx.add(path, str(exc))
    return INVALID


def _field(f: dataclasses.Field[Any], tp: Any, value: Any, path: PathT, ctx: Ctx) -> Any:
    field_meta = f.metadata
    try:
        if value is INVALID:
            return INVALID
        if value is None and _union_args(tp) is not None and type(None) in get_args(tp):
            return None
        if field_meta.get("normalise") and isinstance(value, str):
            value = field_meta["normalise"](value)
        if field_meta.get("parse"):
            result = field_meta["parse"](value, ctx)
        elif field_meta.get("build"):
            result = field_meta["build"](value, path, ctx)
        else:
            result = _build(tp, value, path, ctx)
        if result is not INVALID and field_meta.get("check"):
            message = field_meta["check"](result)
            if message:
                raise Bad(message)
        return result
    except Mismatch as exc:
        ctx.add(path, exc.render(secret=bool(field_meta.get("secret"))))
    except Bad as exc:
        ctx.add(path, str(exc))
    return INVALID


def build_section(cls: type[Section], value: Any, path: PathT, ctx: Ctx) -> Any:
    """A section from a plain mapping: the section, or INVALID with every problem added to ``ctx``."""
    if not isinstance(value, dict):
        raise Mismatch("a mapping", value)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    ok = True
    for key in value:
        if key not in names:
            ctx.add((*path, key), unknown_key(key, names), ctx.key_line_of((*path, key)))
            ok = False
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in fields:
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.add(path, f"missing required key {f.name!r}", ctx.key_line_of(path))
                ok = False
            continue
        result = _field(f, hints[f.name], value[f.name], (*path, f.name), ctx)
        if result is INVALID:
            ok = False
        else:
            kwargs[f.name] = result
    if not ok:
        return INVALID
    obj = cls(**kwargs)
    problems = obj.validate()
    for key, message in problems:
        ctx.add((*path, *key) if isinstance(key, tuple) else (*path, key), message)
    if problems:
        return INVALID
    return obj.finish(ctx, path)
