"""Secrets out of text: URL credentials, secret-looking query values, and known secret strings.

Used by config (``check-config`` output, error messages), capture (camera URLs in log lines) and
logs (the one redaction filter on every log record). Imports nothing from edgedet.

A URL's password is found whatever shape the URL has: ``scheme://user:pw@host``, a single slash
(``rtsp:/user:pw@host``), no scheme at all (``user:pw@host/x``, ``//user:pw@host``), an unencoded
``/`` or ``@`` in the password. A query (or path) parameter is secret when its name contains one of
:data:`SECRET_WORDS` (``auth_token``, ``access_key``, ``passphrase``, ``X-Amz-Signature``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_ONE_SLASH_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/(?!/)")

# A parameter name holding one of these words has a secret value (matched case-insensitively,
# anywhere in the name: apikey, auth_token, access_key, passphrase, client_secret, sessionid, ...).
SECRET_WORDS = ("pass", "pwd", "token", "key", "secret", "auth", "sig", "cred", "sess", "jwt", "bearer",
                "cookie", "hmac")
_NAME_CHARS = r"A-Za-z0-9_.\-\[\]"
_SECRET_PARAM_RE = re.compile(
    rf"(?<![{_NAME_CHARS}])([{_NAME_CHARS}]*(?:{'|'.join(SECRET_WORDS)})[{_NAME_CHARS}]*=)([^&#;\s]*)", re.I
)
# Values of secret-looking parameters that are switches, not secrets: scrubbing "1" or "true" from
# every log line would garble it.
_NOT_SECRET = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null"})


def mask_url(url: str | int) -> str:
    """``rtsp://user:secret@host/x?token=t`` -> ``rtsp://user:***@host/x?token=***``; other
    strings (and device indices) unchanged."""
    url = str(url)
    parts = split_credentials(url)
    if parts is not None:
        head, user, _password, tail = parts
        url = f"{head}{user}:{MASK}@{tail}"
    return _SECRET_PARAM_RE.sub(lambda m: m.group(1) + (MASK if m.group(2) else ""), url)


def url_secrets(url: str) -> list[str]:
    """The secrets inside a URL: its password and secret-looking parameter values."""
    found = [v for m in _SECRET_PARAM_RE.finditer(url) if _is_secret_value(v := m.group(2))]
    parts = split_credentials(url)
    if parts is not None and parts[2]:
        found.append(parts[2])
    return found


def _is_secret_value(value: str) -> bool:
    if not value or value.lower() in _NOT_SECRET:
        return False
    return not (value.isdigit() and len(value) <= 4)


def spellings(secret: str) -> set[str]:
    """A secret as it may appear in text: as written, percent-decoded and percent-encoded."""
    plain = unquote(secret)
    return {s for s in (secret, plain, quote(plain), quote(plain, safe=""), quote_plus(plain)) if s}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` with ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def split_credentials(url: str) -> tuple[str, str, str, str] | None:
    """Split ``scheme://user:password@rest`` into (``scheme://``, user, password, rest).

    Also ``scheme:/user:password@rest`` (one slash), ``//user:password@rest`` and a URL without its
    scheme (``user:password@rest``); a path (``/var/clips/a:b@c.mp4``, ``./x``) has no credentials.
    """
    m = _SCHEME_RE.match(url) or _ONE_SLASH_RE.match(url)
    if m is not None:
        head = url[: m.end()]
    elif url.startswith("//"):
        head = "//"
    elif url.startswith(("/", ".", "~")):
        return None
    else:
        head = ""
    rest = url[len(head):]
    if "@" not in rest:
        return None
    # Up to the last '@': a password may hold an unencoded '@', '/', '?' or '#' (an '@' in a path
    # after real credentials then hides a bit more than the password: safe rather than exact).
    userinfo, _, tail = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not colon:
        return None
    return head, user, password, tail
