"""Logging setup: plain lines to stderr (journald adds the time) through the one redaction filter."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from edgedet.redact import redact


class RedactFilter(logging.Filter):
    """Replaces known secrets (passwords, URL credentials, tokens) in every log record, longest first."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = redact(record.getMessage(), self.secrets), None
        return True


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
