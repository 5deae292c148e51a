"""Logging setup: plain lines to stderr (journald adds the time) through the one redaction filter.

The filter scrubs every known secret (in each spelling: as written, percent-decoded, percent-encoded)
from the whole record as it will be printed: the message with its arguments, an exception's
traceback and a stack. ``set_secrets`` replaces the known secrets (a config reload calls it).
Uncaught exceptions (main thread and other threads) are logged, so their tracebacks are scrubbed too.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from types import TracebackType

from edgedet.redact import redact, spellings

_TRACEBACKS = logging.Formatter()


class RedactFilter(logging.Filter):
    """Replaces known secrets (passwords, URL credentials, tokens) in every log record, longest first."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.set(secrets)

    def set(self, secrets: Iterable[str]) -> None:
        found: set[str] = set()
        for secret in secrets:
            if secret:
                found |= spellings(secret)
        self.secrets = sorted(found, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        return redact(text, self.secrets) if self.secrets else text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


_FILTER = RedactFilter(())


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the secrets the log filter scrubs (at start and on every config reload)."""
    _FILTER.set(secrets)


def scrub(text: str) -> str:
    """``text`` with every known secret masked (for output that does not go through logging)."""
    return _FILTER.scrub(text)


def _uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("edgedet").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("edgedet").critical("uncaught exception in thread %s", name,
                                          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    set_secrets(secrets)
    handler.addFilter(_FILTER)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
