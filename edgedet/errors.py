"""Error hierarchy. Library errors are converted to these at module boundaries.

The CLI turns an ``EdgedetError`` into ``error: <line>`` lines on stderr and an exit code
(:func:`report`): ``ConfigError`` / ``ModelError`` / ``InputError`` exit 2 (a wrong config or input
file: systemd does not restart it, ``RestartPreventExitStatus=2``), ``EnvironmentFault`` 75 (the machine
is not ready yet: restarted), anything else 1 (restarted).
"""

from __future__ import annotations

import sys
from typing import TextIO


class EdgedetError(Exception):
    """Base class: the message is a complete, user-facing, one-line explanation."""

    exit_code = 1


class ConfigError(EdgedetError):
    """Bad configuration; ``problems`` holds every problem found (one line each)."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ModelError(EdgedetError):
    """A model file that cannot be used (missing, not TorchScript, bad metadata...)."""

    exit_code = 2


class InputError(EdgedetError):
    """Bad input data (an unreadable image, an unsupported array)."""

    exit_code = 2


class EnvironmentFault(EdgedetError):
    """The machine is not ready for the daemon (CUDA not up yet at boot, the metrics port still held
    by another process): exit 75 (EX_TEMPFAIL), which systemd's ``Restart=on-failure`` restarts.
    A broken disk or broker never gets here: the daemon keeps detecting and reports it."""

    exit_code = 75


class CaptureError(EdgedetError):
    """A camera/stream could not be opened or read."""


class PublishError(EdgedetError):
    """MQTT publishing failed in a way the caller must know about."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text, or its type name: for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """An exception's whole text on one line (whitespace collapsed), or its type name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def report(exc: EdgedetError, stream: TextIO | None = None) -> int:
    """Print ``exc`` as ``error: <line>`` (one per line of its message; stderr by default) and
    return its exit code: the one place a command turns an ``EdgedetError`` into its exit."""
    out = sys.stderr if stream is None else stream
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"error: {line}", file=out)
    return exc.exit_code
