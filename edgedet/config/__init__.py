"""Configuration: frozen dataclasses, YAML loading with line numbers, secret masking.

``load_config(path)`` returns a :class:`Config` or raises :class:`~edgedet.errors.ConfigError`
listing every problem at once, one line each::

    config.yaml:12: cameras.gate.url: expected rtsp://, http(s)://, a file, ... (got 'rstp://cam/1')

String values may use ``${VAR}``, ``${VAR:-default}`` (used when VAR is unset or empty) and
``$${`` for a literal ``${``. A value that came from the environment may also fill a number or a
true/false key (``port: ${MQTT_PORT:-1883}``).

Relative file paths (camera files, ``model.path``, TLS files, ``mqtt.password_file``) are looked up
in the config file's directory first, then the working directory, and stored absolute. A relative
``state_dir`` is relative to the working directory.

Secrets (``mqtt.password`` and passwords in camera URLs) never appear in error messages, in
``repr()``, or in ``to_dict()`` / ``dump_config()`` output unless ``masked=False`` is asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import unquote, urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edgedet.errors import ConfigError
from edgedet.redact import MASK, mask_url, url_secrets

__all__ = [
    "CameraConfig",
    "CameraKind",
    "Config",
    "EventOverrides",
    "EventThresholds",
    "EventsConfig",
    "HomeAssistantConfig",
    "LogLevel",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "OutboxConfig",
    "Polygon",
    "SnapshotConfig",
    "TlsConfig",
    "WorkersConfig",
    "default_client_id",
    "dump_config",
    "load_config",
    "parse_config",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
CameraKind = Literal["rtsp", "http", "file", "device"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_URL_SCHEMES: dict[str, CameraKind] = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_DEVICE_RE = re.compile(r"/dev/(video[0-9]+|v4l/by-(id|path)/.+)")
_INDEX_RE = re.compile(r"[0-9]+")
_CUDA_RE = re.compile(r"cpu|cuda(:[0-9]+)?")
_URL_EXPECTED = "expected rtsp://, http(s)://, a file, /dev/videoN or a device index"
_POINT_EXPECTED = "expected a point [x, y]"
_TOPIC_SPECIALS = ("/", "+", "#")


# --------------------------------------------------------------------------- helpers (public)


def default_client_id(node_id: str) -> str:
    """An MQTT client id unique per process: ``edgedet-<node_id>-<8 hex digits>``."""
    return f"edgedet-{node_id}-{os.urandom(4).hex()}"


def _default_node_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-")
    return name or "edgedet"


def _default_state_dir() -> str:
    first = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return first or "/var/lib/edgedet"


# --------------------------------------------------------------------------- problem collection

_PathT = tuple[str | int, ...]


class _InvalidType:
    """Marks a value whose problem is already reported; builders pass it through silently."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _InvalidType()


class _EnvStr(str):
    """A string that came from ``${VAR}`` substitution: may also fill number / bool keys."""

    __slots__ = ()


class _Bad(Exception):
    """A problem with one value; the message is complete."""


class _Mismatch(Exception):
    """A value of the wrong type; rendered with the value hidden for secret keys."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value

    def render(self, secret: bool = False) -> str:
        got = _describe(self.value) if secret else _show(self.value)
        return f"expected {self.expected} (got {got})"


def _show(value: Any) -> str:
    """A value as it appears in a message: short, one line, YAML spelling for scalars."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = mask_url(value)  # before shortening, so no part of a password survives
        text = text if len(text) <= 80 else text[:77] + "..."
        suffix = " from the environment" if isinstance(value, _EnvStr) else ""
        return repr(text) + suffix
    if isinstance(value, (int, float)):
        return repr(value)
    return _describe(value)


def _describe(value: Any) -> str:
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


def _dotted(path: _PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass
class _Ctx:
    """State of one parse: where files are looked up, node lines, the problems found so far."""

    name: str
    base_dir: Path | None
    check_files: bool
    lines: dict[_PathT, int] = field(default_factory=dict)
    key_lines: dict[_PathT, int] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)

    def line_of(self, path: _PathT) -> int:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 1

    def key_line_of(self, path: _PathT) -> int:
        """The line of the key that names ``path`` (where a mapping value is reported)."""
        return self.key_lines.get(path) or self.line_of(path)

    def add(self, path: _PathT, message: str, line: int | None = None) -> None:
        line = self.key_line_of(path) if line is None else line
        where = f"{self.name}:{line}: {_dotted(path)}:" if path else f"{self.name}:{line}:"
        self.problems.append((line, f"{where} {message}"))

    def rendered(self) -> list[str]:
        return [text for _, text in sorted(self.problems, key=lambda p: p[0])]


# --------------------------------------------------------------------------- value parsers / checks


def _resolve_path(value: Any, ctx: _Ctx) -> list[Path]:
    if not isinstance(value, str) or not value.strip():
        raise _Mismatch("a file path", value)
    path = Path(os.path.expanduser(value.strip()))
    if path.is_absolute():
        return [Path(os.path.normpath(path))]
    candidates = [Path(os.path.normpath(Path.cwd() / path))]
    if ctx.base_dir is not None:
        candidates.insert(0, Path(os.path.normpath(ctx.base_dir.absolute() / path)))
    return list(dict.fromkeys(candidates))


def _parse_file(value: Any, ctx: _Ctx) -> str:
    """A file that must exist and be readable (unless ``check_files`` is off); stored absolute."""
    candidates = _resolve_path(value, ctx)
    for candidate in candidates:
        if candidate.is_file():
            if ctx.check_files and not os.access(candidate, os.R_OK):
                raise _Bad(f"cannot read {candidate}: permission denied")
            return str(candidate)
    if not ctx.check_files:
        return str(candidates[0])
    for candidate in candidates:
        if candidate.exists():
            raise _Bad(f"not a regular file: {candidate}")
    raise _Bad(f"file not found: {candidates[0]}")


def _parse_model_path(value: Any, ctx: _Ctx) -> str:
    """A model file, or an OpenVINO ``*_openvino_model`` directory (one holding a .xml)."""
    for candidate in _resolve_path(value, ctx):
        if candidate.is_dir() and any(candidate.glob("*.xml")):
            return str(candidate)
    return _parse_file(value, ctx)


def _parse_dir(value: Any, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Mismatch("a directory path", value)
    return os.path.abspath(os.path.expanduser(value.strip()))


def _parse_url(value: Any, ctx: _Ctx) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"{_URL_EXPECTED} (got {_show(value)})")
    if isinstance(value, int):
        if value < 0:
            raise _Bad(f"a device index must be >= 0 (got {value})")
        return value
    text = value.strip()
    if _INDEX_RE.fullmatch(text):
        return int(text)
    if _SCHEME_RE.match(text):
        scheme = text.split(":", 1)[0].lower()
        if scheme not in _URL_SCHEMES:
            raise _Bad(f"{_URL_EXPECTED} (got {_show(value)})")
        try:
            parts = urlsplit(text)
            _ = parts.port
        except ValueError:
            raise _Bad(
                f"bad host or port in URL; percent-encode special characters in the password "
                f"(got {_show(value)})"
            ) from None
        if not parts.hostname:
            raise _Bad(f"the URL has no host (got {_show(value)})")
        return text
    if _DEVICE_RE.fullmatch(text):
        return text
    if not text or text.startswith("/dev/"):
        raise _Bad(f"{_URL_EXPECTED} (got {_show(value)})")
    return _parse_file(text, ctx)


def _url_kind(url: str | int) -> CameraKind:
    if isinstance(url, int) or url.startswith("/dev/"):
        return "device"
    m = _SCHEME_RE.match(url)
    if m is not None:
        return _URL_SCHEMES.get(m.group(1).lower(), "file")
    return "file"


def _at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be >= {low} (got {_show(value)})"

    return check


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high} (got {_show(value)})"

    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0 (got {_show(value)})"


def _not_empty(value: Any) -> str | None:
    return "must not be empty" if not value else None


def _topic_level(value: str) -> str | None:
    if not _NAME_RE.fullmatch(value):
        return f"use only letters, digits, '_' and '-' (it is an MQTT topic level) (got {_show(value)})"
    return None


def _topic_prefix(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if "+" in value or "#" in value:
        return f"must not contain '+' or '#' (got {_show(value)})"
    if value.startswith("/") or value.endswith("/"):
        return f"must not start or end with '/' (got {_show(value)})"
    if "//" in value:
        return f"must not contain an empty topic level '//' (got {_show(value)})"
    return None


def _fourcc(value: str) -> str | None:
    return None if len(value) == 4 else f"must be exactly 4 characters, e.g. 'MJPG' (got {_show(value)})"


def _torch_device(value: str) -> str | None:
    return None if _CUDA_RE.fullmatch(value) else f"expected 'cpu', 'cuda' or 'cuda:N' (got {_show(value)})"


def _classes(value: list[str | int]) -> str | None:
    if not value:
        return "must not be empty (remove the key to keep every class)"
    bad = [c for c in value if isinstance(c, int) and c < 0]
    if bad:
        return f"class ids must be >= 0 (got {bad[0]})"
    return None


def _meta(
    *,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[Any, _Ctx], Any] | None = None,
    build: Callable[[Any, _PathT, _Ctx], Any] | None = None,
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


# --------------------------------------------------------------------------- polygons


@dataclass(frozen=True, slots=True)
class Polygon:
    """A zone or mask outline: 3 or more ``(x, y)`` points.

    ``pixels`` is False when every coordinate is within 0..1 (fractions of the frame width and
    height) and True when any coordinate is above 1 (source-frame pixels). Written in YAML as
    ``[[x, y], [x, y], ...]``.
    """

    points: tuple[tuple[float, float], ...]
    pixels: bool

    def to_list(self) -> list[list[float]]:
        return [[x, y] for x, y in self.points]


def _polygon_area(points: list[tuple[float, float]]) -> float:
    twice = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True))
    return abs(twice) / 2.0


def _build_polygon(value: Any, path: _PathT, ctx: _Ctx) -> Any:
    """``[[x, y], ...]`` -> Polygon; problems with single points are reported at their own line."""
    if not isinstance(value, list):
        raise _Mismatch("a list of [x, y] points", value)
    points: list[tuple[float, float]] = []
    ok = True
    for i, item in enumerate(value):
        point_path = (*path, i)
        if item is _INVALID:
            ok = False
            continue
        if not isinstance(item, list) or len(item) != 2:
            count = len(item) if isinstance(item, list) else 0
            got = f"{count} value{'' if count == 1 else 's'}" if isinstance(item, list) else _show(item)
            ctx.add(point_path, f"{_POINT_EXPECTED} (got {got})")
            ok = False
            continue
        coords: list[float] = []
        for j, raw in enumerate(item):
            try:
                number = _scalar(float, raw) if raw is not _INVALID else _INVALID
            except _Mismatch as exc:
                ctx.add((*point_path, j), exc.render())
                number = _INVALID
            if number is not _INVALID and not number >= 0:
                ctx.add((*point_path, j), f"coordinates must be >= 0 (got {_show(number)})")
                number = _INVALID
            if number is _INVALID:
                ok = False
            else:
                coords.append(number)
        if len(coords) == 2:
            points.append((coords[0], coords[1]))
    if not ok:
        return _INVALID
    if len(points) < 3:
        raise _Bad(f"a polygon needs at least 3 points (got {len(points)})")
    if _polygon_area(points) == 0.0:
        raise _Bad("the polygon has no area (its points are on one line)")
    pixels = any(v > 1.0 for point in points for v in point)
    return Polygon(tuple(points), pixels)


# Value types that are not sections but build themselves from YAML (with nested paths).
_VALUE_BUILDERS: dict[Any, Callable[[Any, _PathT, _Ctx], Any]] = {Polygon: _build_polygon}


# --------------------------------------------------------------------------- sections


class _Section:
    """Shared behaviour of config sections: cross-field rules, plain-dict view, masked repr."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def validate(self) -> Sequence[tuple[str | tuple[str, ...], str]]:
        """Cross-field rules: ``(key, message)`` pairs, empty when the section is consistent.

        ``key`` is a key of this section, or a tuple of keys for a value nested deeper.
        """
        return []

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


def _plain(value: Any, meta: Any, masked: bool, keep: bool = False) -> Any:
    if value is None:
        return None
    if masked and meta.get("secret"):
        return MASK
    if masked and meta.get("url") and isinstance(value, str):
        return mask_url(value)
    if isinstance(value, _Section):
        return value if keep else value.to_dict(masked)
    if isinstance(value, Polygon):
        return value if keep else value.to_list()
    if isinstance(value, dict):
        return {k: _plain(v, {}, masked, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, {}, masked, keep) for v in value]
    return value


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CameraConfig(_Section):
    """One video source. ``kind`` is derived from ``url``."""

    url: str | int = field(metadata=_meta(parse=_parse_url, url=True))
    enabled: bool = True
    fps_limit: float | None = field(default=None, metadata=_meta(check=_positive))
    transport: Literal["tcp", "udp"] = field(default="tcp", metadata=_meta(normalise=str.lower))
    width: int | None = field(default=None, metadata=_meta(check=_at_least(1)))
    height: int | None = field(default=None, metadata=_meta(check=_at_least(1)))
    fourcc: str | None = field(default=None, metadata=_meta(check=_fourcc))
    loop: bool = False
    realtime: bool = True
    stall_timeout_s: float = field(default=10.0, metadata=_meta(check=_positive))
    # Report (metric + log) a camera whose image has not changed for this long; null disables.
    frozen_after_s: float | None = field(default=60.0, metadata=_meta(check=_positive))
    queue_size: int = field(default=1, metadata=_meta(check=_between(1, 16)))
    zones: dict[str, Polygon] = field(default_factory=dict)
    masks: list[Polygon] = field(default_factory=list)

    @property
    def kind(self) -> CameraKind:
        """``rtsp`` (rtsp/rtsps), ``http`` (http/https), ``file`` or ``device`` (index or /dev/...)."""
        return _url_kind(self.url)

    def validate(self) -> list[tuple[str, str]]:
        kind = self.kind
        out: list[tuple[str, str]] = []
        if kind != "file":
            if self.loop:
                out.append(("loop", f"only applies to file sources (this camera is {kind})"))
            if not self.realtime:
                out.append(("realtime", f"only applies to file sources (this camera is {kind})"))
        if kind != "device":
            for key in ("width", "height", "fourcc"):
                if getattr(self, key) is not None:
                    out.append((key, f"only applies to device (USB) cameras (this camera is {kind})"))
        if kind != "rtsp" and self.transport != "tcp":
            out.append(("transport", f"only applies to rtsp cameras (this camera is {kind})"))
        return out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ModelConfig(_Section):
    path: str = field(metadata=_meta(parse=_parse_model_path))
    device: str = field(default="cpu", metadata=_meta(check=_torch_device))
    # auto: by model.path (.onnx -> onnxruntime, *_openvino_model/ or .xml -> openvino, else torchscript)
    backend: Literal["auto", "torchscript", "onnxruntime", "openvino"] = "auto"
    half: bool = False
    conf: float = field(default=0.25, metadata=_meta(check=_between(0, 1)))
    iou: float = field(default=0.7, metadata=_meta(check=_between(0, 1)))
    classes: list[str | int] | None = field(default=None, metadata=_meta(check=_classes))
    max_det: int = field(default=300, metadata=_meta(check=_at_least(1)))

    def validate(self) -> list[tuple[str, str]]:
        if self.half and self.device == "cpu":
            return [("half", "half precision needs a CUDA device")]
        if self.backend == "openvino" and self.device != "cpu":
            return [("device", f"the openvino backend runs on cpu only (got {self.device!r})")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class WorkersConfig(_Section):
    count: int | None = field(default=None, metadata=_meta(check=_at_least(1)))
    threads_per_worker: int | None = field(default=None, metadata=_meta(check=_at_least(1)))
    # Cross-camera micro-batching (for GPUs): gather up to batch_size frames from different
    # cameras, waiting at most batch_timeout_ms after the first, and run them in one forward.
    batch_size: int = field(default=1, metadata=_meta(check=_between(1, 256)))
    batch_timeout_ms: float = field(default=5.0, metadata=_meta(check=_between(0, 1000)))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class TlsConfig(_Section):
    ca: str | None = field(default=None, metadata=_meta(parse=_parse_file))
    cert: str | None = field(default=None, metadata=_meta(parse=_parse_file))
    key: str | None = field(default=None, metadata=_meta(parse=_parse_file))
    insecure: bool = False

    def validate(self) -> list[tuple[str, str]]:
        if self.cert is not None and self.key is None:
            return [("cert", "a client certificate needs its private key (set tls.key too)")]
        if self.key is not None and self.cert is None:
            return [("key", "a private key needs its client certificate (set tls.cert too)")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MqttConfig(_Section):
    """Broker connection. After loading, ``password`` holds the password_file content if set."""

    host: str = field(default="127.0.0.1", metadata=_meta(check=_not_empty))
    port: int = field(default=1883, metadata=_meta(check=_between(1, 65535)))
    client_id: str | None = field(default=None, metadata=_meta(check=_not_empty))
    username: str | None = None
    password: str | None = field(default=None, metadata=_meta(secret=True))
    password_file: str | None = field(default=None, metadata=_meta(parse=_parse_file))
    tls: TlsConfig | None = None
    topic_prefix: str = field(default="edgedet", metadata=_meta(check=_topic_prefix))
    qos: int = field(default=1, metadata=_meta(check=_between(0, 2)))
    keepalive: int = field(default=60, metadata=_meta(check=_at_least(5)))
    publish_empty: bool = False

    def validate(self) -> list[tuple[str, str]]:
        if self.password is not None and self.password_file is not None:
            return [("password_file", "set password or password_file, not both")]
        if self.username is None:
            for key in ("password", "password_file"):
                if getattr(self, key) is not None:
                    return [(key, "a password needs a username (set mqtt.username)")]
        return []

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        out = _Section.to_dict(self, masked)
        if self.password_file is not None:
            out["password"] = None  # the file's content is never shown, masked or not
        return out

    def _finish(self, ctx: _Ctx, path: _PathT) -> MqttConfig | None:
        """Read ``password_file`` into ``password``; None (problem reported) when it cannot be read."""
        if self.password_file is None:
            return self
        try:
            secret = Path(self.password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            if not ctx.check_files:
                return self
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
            ctx.add((*path, "password_file"), f"cannot read {self.password_file}: {reason}")
            return None
        if not secret:
            ctx.add((*path, "password_file"), f"the file is empty: {self.password_file}")
            return None
        return dataclasses.replace(self, password=secret)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MetricsConfig(_Section):
    enabled: bool = True
    host: str = field(default="127.0.0.1", metadata=_meta(check=_not_empty))
    port: int = field(default=9108, metadata=_meta(check=_between(0, 65535)))


def _label_key(name: str) -> str | None:
    if not name or any(c in name for c in _TOPIC_SPECIALS):
        return "bad label: must not be empty or contain '/', '+' or '#' (it is an MQTT topic level)"
    return None


def _confirm_rule(confirm: int, window: int) -> str:
    return f"confirm_frames ({confirm}) must be <= window_frames ({window})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EventThresholds(_Section):
    """When detections of one label become an event (K of N frames) and when it updates / ends."""

    confirm_frames: int = field(default=3, metadata=_meta(check=_at_least(1)))
    window_frames: int = field(default=5, metadata=_meta(check=_at_least(1)))
    min_score: float = field(default=0.5, metadata=_meta(check=_between(0, 1)))
    min_area: float = field(default=0.0, metadata=_meta(check=_between(0, 1)))
    clear_after_s: float = field(default=10.0, metadata=_meta(check=_positive))
    update_interval_s: float = field(default=5.0, metadata=_meta(check=_at_least(0)))

    def validate(self) -> list[tuple[str, str]]:
        if self.confirm_frames > self.window_frames:
            return [("confirm_frames", _confirm_rule(self.confirm_frames, self.window_frames))]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EventOverrides(_Section):
    """Per-label overrides of :class:`EventThresholds`; ``None`` keeps the default."""

    confirm_frames: int | None = field(default=None, metadata=_meta(check=_at_least(1)))
    window_frames: int | None = field(default=None, metadata=_meta(check=_at_least(1)))
    min_score: float | None = field(default=None, metadata=_meta(check=_between(0, 1)))
    min_area: float | None = field(default=None, metadata=_meta(check=_between(0, 1)))
    clear_after_s: float | None = field(default=None, metadata=_meta(check=_positive))
    update_interval_s: float | None = field(default=None, metadata=_meta(check=_at_least(0)))

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        return {k: v for k, v in _Section.to_dict(self, masked).items() if v is not None}

    def apply(self, base: EventThresholds) -> EventThresholds:
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is not None}
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SnapshotConfig(_Section):
    """Event snapshots under ``<state_dir>/snapshots``; the oldest are deleted first."""

    enabled: bool = True
    keep: int = field(default=200, metadata=_meta(check=_at_least(1)))
    max_mb: float = field(default=200.0, metadata=_meta(check=_positive))
    crop: bool = False


def _build_labels(value: Any, path: _PathT, ctx: _Ctx) -> Any:
    """``events.labels``: label -> overrides. Labels are model labels, so spaces are allowed."""
    if not isinstance(value, dict):
        raise _Mismatch("a mapping", value)
    out: dict[str, Any] = {}
    for name, item in value.items():
        item_path = (*path, name)
        problem = _label_key(str(name))
        if problem:
            ctx.add(item_path, problem, ctx.key_line_of(item_path))
            out[name] = _INVALID
        else:
            out[name] = _element(EventOverrides, item, item_path, ctx)
    return _INVALID if any(item is _INVALID for item in out.values()) else out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EventsConfig(_Section):
    """Confirmed events: per-label thresholds and snapshots (see docs in config/edgedet.example.yaml)."""

    enabled: bool = True
    default: EventThresholds = field(default_factory=EventThresholds)
    labels: dict[str, EventOverrides] = field(default_factory=dict, metadata=_meta(build=_build_labels))
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)

    def thresholds(self, label: str) -> EventThresholds:
        """The thresholds for ``label``: its overrides applied to ``default``."""
        overrides = self.labels.get(label)
        return self.default if overrides is None else overrides.apply(self.default)

    def validate(self) -> list[tuple[str | tuple[str, ...], str]]:
        out: list[tuple[str | tuple[str, ...], str]] = []
        for label, overrides in self.labels.items():
            merged = overrides.apply(self.default)
            if merged.confirm_frames > merged.window_frames:
                key = "confirm_frames" if overrides.confirm_frames is not None else "window_frames"
                out.append((("labels", label, key), _confirm_rule(merged.confirm_frames, merged.window_frames)))
        return out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class OutboxConfig(_Section):
    """On-disk outbox of QoS>=1 MQTT messages at ``<state_dir>/outbox.sqlite3`` (see edgedet/outbox.py).

    ``mode: events_only`` stores events and snapshots but not the per-frame detections.
    """

    enabled: bool = True
    mode: Literal["all", "events_only"] = "all"
    max_messages: int = field(default=100_000, metadata=_meta(check=_at_least(100)))
    max_age_s: float = field(default=7 * 24 * 3600.0, metadata=_meta(check=_positive))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery (opt-in; see edgedet/homeassistant.py): retained entity
    configs under ``<prefix>/<component>/...`` and a per-camera stats topic."""

    discovery: bool = False
    prefix: str = field(default="homeassistant", metadata=_meta(check=_topic_prefix))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Config(_Section):
    """The whole daemon configuration (see config/edgedet.example.yaml)."""

    node_id: str = field(default_factory=_default_node_id, metadata=_meta(check=_topic_level))
    log_level: LogLevel = field(default="INFO", metadata=_meta(normalise=str.upper))
    state_dir: str = field(default_factory=_default_state_dir, metadata=_meta(parse=_parse_dir))
    cameras: dict[str, CameraConfig] = field(
        metadata=_meta(check=lambda v: None if v else "at least one camera is required")
    )
    model: ModelConfig
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    # systemd watchdog: pings stop (and systemd restarts edgedet) when no live camera has had a
    # frame processed for this long, or a worker is stuck.
    watchdog_grace_s: float = field(default=120.0, metadata=_meta(check=_positive))

    def validate(self) -> list[tuple[str, str]]:
        if self.cameras and not any(cam.enabled for cam in self.cameras.values()):
            return [("cameras", "every camera is disabled; enable at least one")]
        return []

    def secrets(self) -> list[str]:
        """Strings to scrub from log lines: the MQTT password and camera URL passwords."""
        found: list[str] = []
        if self.mqtt.password:
            found.append(self.mqtt.password)
        for cam in self.cameras.values():
            if isinstance(cam.url, str):
                for secret in url_secrets(cam.url):
                    found += [secret, unquote(secret)]
        return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- YAML nodes -> values

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VAR_RE = re.compile(r"\$(\$?)\{([^{}]*)\}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _substitute(text: str, path: _PathT, ctx: _Ctx) -> Any:
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
        return _INVALID
    return _EnvStr(result) if used_env else result


class _Converter:
    """Turns the composed node tree into plain values, recording each key path's line."""

    def __init__(self, ctx: _Ctx, loader: yaml.SafeLoader) -> None:
        self.ctx = ctx
        self.loader = loader
        self.active: set[int] = set()
        self.flattened: set[int] = set()

    def value(self, node: Node, path: _PathT) -> Any:
        self.ctx.lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            if node.tag == _STR_TAG:
                return _substitute(node.value, path, self.ctx)
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                self.ctx.add(path, f"cannot read this value: {_one_line(getattr(exc, 'problem', exc))}")
                return _INVALID
        if id(node) in self.active:
            self.ctx.add(path, "recursive YAML alias")
            return _INVALID
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
                return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
                return self.mapping(node, path)
            self.ctx.add(path, f"unsupported YAML tag {node.tag}")
            return _INVALID
        finally:
            self.active.discard(id(node))

    def mapping(self, node: MappingNode, path: _PathT) -> Any:
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
                ctx.add(path, f"bad merge key '<<': {_one_line(getattr(exc, 'problem', exc))}")
                return _INVALID
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


# --------------------------------------------------------------------------- values -> dataclasses

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, _Section)


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


def _scalar(tp: Any, value: Any) -> Any:
    if _fits(tp, value):
        return float(value) if tp is float else (str(value) if tp is str else value)
    if isinstance(value, _EnvStr):
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
    raise _Mismatch(_expected(tp), value)


def _build(tp: Any, value: Any, path: _PathT, ctx: _Ctx) -> Any:
    """Build a value of type ``tp``; raises _Bad/_Mismatch for this value, records nested ones."""
    if value is _INVALID:
        return _INVALID
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
        raise _Mismatch(_expected(tp), value)
    origin = get_origin(tp)
    if origin is Literal:
        options = get_args(tp)
        if isinstance(value, str) and value in options:
            return str(value)
        raise _Bad(f"expected one of {', '.join(map(repr, options))} (got {_show(value)})")
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch("a list", value)
        items = [_element(get_args(tp)[0], item, (*path, i), ctx) for i, item in enumerate(value)]
        return _INVALID if any(item is _INVALID for item in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch("a mapping", value)
        out: dict[str, Any] = {}
        for name, item in value.items():
            if not _NAME_RE.fullmatch(name):
                ctx.add((*path, name), "bad name: use only letters, digits, '_' and '-' "
                        "(it is an MQTT topic level)", ctx.key_line_of((*path, name)))
                out[name] = _INVALID
            else:
                out[name] = _element(get_args(tp)[1], item, (*path, name), ctx)
        return _INVALID if any(item is _INVALID for item in out.values()) else out
    if _is_section(tp):
        return _section(tp, {} if value is None else value, path, ctx)
    builder = _VALUE_BUILDERS.get(tp)
    if builder is not None:
        return builder(value, path, ctx)
    return _scalar(tp, value)


def _element(tp: Any, value: Any, path: _PathT, ctx: _Ctx) -> Any:
    try:
        return _build(tp, value, path, ctx)
    except _Mismatch as exc:
        ctx.add(path, exc.render())
    except _Bad as exc:
        ctx.add(path, str(exc))
    return _INVALID


def _field(f: dataclasses.Field[Any], tp: Any, value: Any, path: _PathT, ctx: _Ctx) -> Any:
    meta = f.metadata
    try:
        if value is _INVALID:
            return _INVALID
        if value is None and _union_args(tp) is not None and type(None) in get_args(tp):
            return None
        if meta.get("normalise") and isinstance(value, str):
            value = meta["normalise"](value)
        if meta.get("parse"):
            result = meta["parse"](value, ctx)
        elif meta.get("build"):
            result = meta["build"](value, path, ctx)
        else:
            result = _build(tp, value, path, ctx)
        if result is not _INVALID and meta.get("check"):
            message = meta["check"](result)
            if message:
                raise _Bad(message)
        return result
    except _Mismatch as exc:
        ctx.add(path, exc.render(secret=bool(meta.get("secret"))))
    except _Bad as exc:
        ctx.add(path, str(exc))
    return _INVALID


def _section(cls: type[_Section], value: Any, path: _PathT, ctx: _Ctx) -> Any:
    if not isinstance(value, dict):
        raise _Mismatch("a mapping", value)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    ok = True
    for key in value:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(names)}"
            ctx.add((*path, key), f"unknown key {key!r} ({hint})", ctx.key_line_of((*path, key)))
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
        if result is _INVALID:
            ok = False
        else:
            kwargs[f.name] = result
    if not ok:
        return _INVALID
    obj = cls(**kwargs)
    problems = obj.validate()
    for key, message in problems:
        ctx.add((*path, *key) if isinstance(key, tuple) else (*path, key), message)
    if problems:
        return _INVALID
    if isinstance(obj, MqttConfig):
        return obj._finish(ctx, path) or _INVALID
    return obj


# --------------------------------------------------------------------------- entry points


def _yaml_problem(name: str, exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{name}: malformed YAML: {_one_line(exc)}"
    mark = exc.problem_mark or exc.context_mark
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = _one_line(exc.problem or "")
    context = _one_line(exc.context or "")
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
    ctx = _Ctx(name=name, base_dir=base_dir, check_files=check_files)
    try:
        loader = yaml.SafeLoader(text)
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
        data = _Converter(ctx, loader).value(root, ())
        config = _section(Config, data, (), ctx) if data is not _INVALID else _INVALID
    finally:
        loader.dispose()
    if ctx.problems or not isinstance(config, Config):
        raise ConfigError(ctx.rendered() or [f"{name}: invalid configuration"])
    return config


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read and validate a YAML config file; raise ConfigError listing every problem."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
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
