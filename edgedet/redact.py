"""Secrets out of text: URL credentials, secret-looking query values, and known secret strings.

Used by config (``check-config`` output), capture (camera URLs in log lines) and logs (the one
redaction filter on every log record). Imports nothing from edgedet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

# Query parameters whose values are secrets (``rtsp://cam/live?token=...``).
_SECRET_QUERY_RE = re.compile(
    r"([?&](?:pass|passwd|password|pwd|token|key|secret|auth|api_key|apikey|access_token)=)([^&#]*)", re.I
)


def mask_url(url: str | int) -> str:
    """``rtsp://user:secret@host/x?token=t`` -> ``rtsp://user:***@host/x?token=***``; other
    strings (and device indices) unchanged."""
    url = str(url)
    parts = split_credentials(url)
    if parts is not None:
        head, user, _password, tail = parts
        url = f"{head}{user}:{MASK}@{tail}"
    return _SECRET_QUERY_RE.sub(lambda m: m.group(1) + (MASK if m.group(2) else ""), url)


def url_secrets(url: str) -> list[str]:
    """The secrets inside a URL: its password and secret-looking query values."""
    found = [m.group(2) for m in _SECRET_QUERY_RE.finditer(url) if m.group(2)]
    parts = split_credentials(url)
    if parts is not None and parts[2]:
        found.append(parts[2])
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` with ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def split_credentials(url: str) -> tuple[str, str, str, str] | None:
    """Split ``scheme://user:password@rest`` into (``scheme://``, user, password, rest)."""
    m = _SCHEME_RE.match(url)
    if m is None:
        return None
    head, rest = url[: m.end()], url[m.end() :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[:end]:
        userinfo, _, host = rest[:end].rpartition("@")
        tail = host + rest[end:]
    elif "@" in rest:
        # An unencoded '/', '?' or '#' in the password: mask up to the last '@' to be safe.
        userinfo, _, tail = rest.rpartition("@")
    else:
        return None
    user, colon, password = userinfo.partition(":")
    if not colon:
        return None
    return head, user, password, tail
