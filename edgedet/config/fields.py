"""What single config values accept: parsers (files, URLs, ...), checks (ranges, topic levels, ...)
and computed defaults.

A parser ``parse(value, ctx) -> value`` replaces the type-driven build of a field and raises
:class:`~edgedet.config.problems.Bad` or :class:`~edgedet.config.problems.Mismatch`. A check
``check(value) -> message | None`` runs once the value has the right type.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from edgedet.config.problems import Bad, Ctx, Mismatch, show
from edgedet.redact import split_credentials

CameraKind = Literal["rtsp", "http", "file", "device"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_URL_SCHEMES: dict[str, CameraKind] = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_ONE_SLASH_RE = re.compile(r"(rtsps?|https?):/(?!/)", re.I)
_DEVICE_RE = re.compile(r"/dev/(video[0-9]+|v4l/by-(id|path)/.+)")
_INDEX_RE = re.compile(r"[0-9]+")
_CUDA_RE = re.compile(r"cpu|cuda(:[0-9]+)?")
_URL_EXPECTED = "expected rtsp://, http(s)://, a file, /dev/videoN or a device index"
_TOPIC_SPECIALS = ("/", "+", "#")


# --------------------------------------------------------------------------- defaults


def default_client_id(node_id: str) -> str:
    """An MQTT client id unique per process: ``edgedet-<node_id>-<8 hex digits>``."""
    return f"edgedet-{node_id}-{os.urandom(4).hex()}"


def default_node_id() -> str:
    """The host name made into an MQTT topic level (``edgedet`` when nothing is left)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-")
    return name or "edgedet"


def default_state_dir() -> str:
    """systemd's first ``$STATE_DIRECTORY``, else ``/var/lib/edgedet``."""
    first = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return first or "/var/lib/edgedet"


# --------------------------------------------------------------------------- parsers


def _resolve_path(value: Any, ctx: Ctx) -> list[Path]:
    if not isinstance(value, str) or not value.strip():
        raise Mismatch("a file path", value)
    path = Path(os.path.expanduser(value.strip()))
    if path.is_absolute():
        return [Path(os.path.normpath(path))]
    candidates = [Path(os.path.normpath(Path.cwd() / path))]
    if ctx.base_dir is not None:
        candidates.insert(0, Path(os.path.normpath(ctx.base_dir.absolute() / path)))
    return list(dict.fromkeys(candidates))


def parse_file(value: Any, ctx: Ctx) -> str:
    """A file that must exist and be readable (unless ``check_files`` is off); stored absolute."""
    candidates = _resolve_path(value, ctx)
    for candidate in candidates:
        if candidate.is_file():
            if ctx.check_files and not os.access(candidate, os.R_OK):
                raise Bad(f"cannot read {candidate}: permission denied")
            return str(candidate)
    if not ctx.check_files:
        return str(candidates[0])
    for candidate in candidates:
        if candidate.exists():
            raise Bad(f"not a regular file: {candidate}")
    raise Bad(f"file not found: {candidates[0]}")


def parse_model_path(value: Any, ctx: Ctx) -> str:
    """A model file, or an OpenVINO / ncnn model directory (one holding a .xml / a .ncnn.param)."""
    for candidate in _resolve_path(value, ctx):
        if candidate.is_dir() and (any(candidate.glob("*.xml")) or any(candidate.glob("*.ncnn.param"))):
            return str(candidate)
    return parse_file(value, ctx)


def parse_dir(value: Any, ctx: Ctx) -> str:
    """A directory (need not exist yet), relative to the working directory; stored absolute."""
    if not isinstance(value, str) or not value.strip():
        raise Mismatch("a directory path", value)
    return os.path.abspath(os.path.expanduser(value.strip()))


def parse_url(value: Any, ctx: Ctx) -> str | int:
    """A camera source: rtsp(s)/http(s) URL, /dev/video device, device index or file."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Bad(f"{_URL_EXPECTED} (got {show(value)})")
    if isinstance(value, int):
        if value < 0:
            raise Bad(f"a device index must be >= 0 (got {value})")
        return value
    text = value.strip()
    if _INDEX_RE.fullmatch(text):
        return int(text)
    if _SCHEME_RE.match(text):
        scheme = text.split(":", 1)[0].lower()
        if scheme not in _URL_SCHEMES:
            raise Bad(f"{_URL_EXPECTED} (got {show(value)})")
        try:
            parts = urlsplit(text)
            _ = parts.port
        except ValueError:
            raise Bad(
                f"bad host or port in URL; percent-encode special characters in the password "
                f"(got {show(value)})"
            ) from None
        if not parts.hostname:
            raise Bad(f"the URL has no host (got {show(value)})")
        return text
    if _ONE_SLASH_RE.match(text):
        scheme = text.split(":", 1)[0]
        raise Bad(f"{_URL_EXPECTED} (got {show(value)}): write two slashes after '{scheme}:'")
    if split_credentials(text) is not None:
        raise Bad(f"{_URL_EXPECTED} (got {show(value)}): a URL with a password needs its scheme, e.g. rtsp://")
    if _DEVICE_RE.fullmatch(text):
        return text
    if not text or text.startswith("/dev/"):
        raise Bad(f"{_URL_EXPECTED} (got {show(value)})")
    return parse_file(text, ctx)


def url_kind(url: str | int) -> CameraKind:
    """The kind of a parsed camera source (see :func:`parse_url`)."""
    if isinstance(url, int) or url.startswith("/dev/"):
        return "device"
    m = _SCHEME_RE.match(url)
    if m is not None:
        return _URL_SCHEMES.get(m.group(1).lower(), "file")
    return "file"


# --------------------------------------------------------------------------- checks


def at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be >= {low} (got {show(value)})"

    return check


def between(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high} (got {show(value)})"

    return check


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0 (got {show(value)})"


def not_empty(value: Any) -> str | None:
    return "must not be empty" if not value else None


def valid_topic_level(value: str) -> str | None:
    if not _NAME_RE.fullmatch(value):
        return f"use only letters, digits, '_' and '-' (it is an MQTT topic level) (got {show(value)})"
    return None


def valid_topic_prefix(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if "+" in value or "#" in value:
        return f"must not contain '+' or '#' (got {show(value)})"
    if value.startswith("/") or value.endswith("/"):
        return f"must not start or end with '/' (got {show(value)})"
    if "//" in value:
        return f"must not contain an empty topic level '//' (got {show(value)})"
    return None


def valid_fourcc(value: str) -> str | None:
    return None if len(value) == 4 else f"must be exactly 4 characters, e.g. 'MJPG' (got {show(value)})"


def valid_torch_device(value: str) -> str | None:
    return None if _CUDA_RE.fullmatch(value) else f"expected 'cpu', 'cuda' or 'cuda:N' (got {show(value)})"


def valid_classes(value: list[str | int]) -> str | None:
    if not value:
        return "must not be empty (remove the key to keep every class)"
    bad = [c for c in value if isinstance(c, int) and c < 0]
    if bad:
        return f"class ids must be >= 0 (got {bad[0]})"
    return None


def name_key(name: str) -> str | None:
    """A key of a name -> section mapping (camera names, zone names): an MQTT topic level."""
    if not _NAME_RE.fullmatch(name):
        return "bad name: use only letters, digits, '_' and '-' (it is an MQTT topic level)"
    return None


def label_key(name: str) -> str | None:
    """A key of ``events.labels``: a model label (spaces allowed) that is still a topic level."""
    if not name or any(c in name for c in _TOPIC_SPECIALS):
        return "bad label: must not be empty or contain '/', '+' or '#' (it is an MQTT topic level)"
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def at_least_chars(n: int) -> Callable[[str], str | None]:
    """A check: a string of at least ``n`` characters (the value itself is never shown)."""

    def check(value: str) -> str | None:
        return None if len(value) >= n else f"must be at least {n} characters long (got {len(value)})"

    return check
