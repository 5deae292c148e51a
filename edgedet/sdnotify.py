"""The systemd notification protocol (sd_notify), spoken directly: no libsystemd, stdlib only.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, an AF_UNIX datagram socket (a path, or
an abstract name written ``@name``), and reads newline-separated ``KEY=value`` lines from it:
``READY=1`` when start-up is done, ``STATUS=...`` for ``systemctl status``, ``WATCHDOG=1`` as a
keep-alive when ``WatchdogSec=`` is set, ``STOPPING=1`` / ``RELOADING=1`` around shutdown and
reload.

Without ``$NOTIFY_SOCKET`` (a terminal, a test, a container) every :class:`Notifier` method is a
cheap no-op. Sending never raises: a failure is logged once (WARNING) and again only after a
send has succeeded in between, so a missing systemd never floods the journal at every ping.

:class:`WatchdogThread` pings only while a ``healthy()`` callback says so: a stuck worker or a
dead pipeline stops the pings and systemd restarts the service after ``WatchdogSec=``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "WatchdogThread", "watchdog_interval"]

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 2.0  # systemd drains the socket at once; never let a full queue block a caller


def _address(name: str) -> bytes | None:
    """``@abstract`` -> ``b"\\0abstract"``; ``/abs/path`` -> bytes; anything else -> None."""
    if name.startswith("@") and len(name) > 1:
        return b"\0" + os.fsencode(name[1:])
    if name.startswith("/"):
        return os.fsencode(name)
    return None


def _field(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    # One field per line: a newline inside a value would start a bogus field.
    return str(value).replace("\r", " ").replace("\n", " ")


class Notifier:
    """Sends sd_notify messages to ``socket_path`` (default: ``$NOTIFY_SOCKET``).

    Thread-safe. Every method returns True when the message was handed to the socket and False
    when notifications are disabled or the send failed (already logged).
    """

    def __init__(self, socket_path: str | None = None) -> None:
        name = os.environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._name = name
        self._address = _address(name) if name else None
        if name and self._address is None:
            log.warning(
                "NOTIFY_SOCKET=%r is neither an absolute path nor an abstract '@name'; "
                "systemd notifications disabled", name,
            )
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (running under ``Type=notify``)."""
        return self._address is not None

    def send(self, text: str) -> bool:
        """Send ``text`` (``KEY=value`` lines) as one datagram."""
        if self._address is None or not text:
            return False
        data = text.encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(SEND_TIMEOUT_S)
                    self._sock = sock
                self._sock.sendto(data, self._address)
            except OSError as exc:  # includes the send timeout
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "cannot notify systemd via %s: %s (not logged again until a notification gets through)",
                        self._name, exc,
                    )
                return False
            if self._failing:
                self._failing = False
                log.info("systemd notifications via %s work again", self._name)
            return True

    def notify(self, **fields: object) -> bool:
        """``notify(READY=1, STATUS="up")`` sends ``READY=1\\nSTATUS=up`` (in argument order)."""
        return self.send("\n".join(f"{key}={_field(value)}" for key, value in fields.items()))

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: ``READY=1`` plus ``STATUS=`` when given."""
        return self.notify(READY=1) if status is None else self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Watchdog keep-alive: ``WATCHDOG=1``."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun: ``STOPPING=1`` plus ``STATUS=`` when given."""
        return self.notify(STOPPING=1) if status is None else self.notify(STOPPING=1, STATUS=status)

    def reloading(self) -> bool:
        """A reload has begun: ``RELOADING=1`` and ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, as
        systemd >= 253 expects); send :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __repr__(self) -> str:
        return f"Notifier({self._name!r})" if self.enabled else "Notifier(disabled)"


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``.

    None when the watchdog is off: ``WATCHDOG_USEC`` unset, not a positive integer, or
    ``WATCHDOG_PID`` set to another process (the variables were inherited, not meant for us).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "").strip()
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: expected an integer number of microseconds", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "").strip()
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 2_000_000


class WatchdogThread(threading.Thread):
    """Pings the systemd watchdog while ``healthy()`` says the daemon works.

    Every ``interval`` seconds (first check at once) until ``stop`` is set:

    * ``healthy()`` returns ``(ok, summary)``. ``WATCHDOG=1`` is sent only when ``ok``; an
      exception counts as unhealthy (logged once). A WARNING is logged when pings stop and an
      INFO line when they resume.
    * ``STATUS=<summary>`` is sent when the summary differs from the last one sent: at once when
      ``ok`` flipped (or the first time), otherwise at most every ``status_every`` seconds.

    ``healthy()`` runs on this thread: keep it quick and non-blocking. The thread is a daemon
    thread, so a hung callback cannot hold up interpreter exit; join it after setting ``stop``.
    """

    def __init__(
        self,
        notifier: Notifier,
        stop: threading.Event,
        healthy: Callable[[], tuple[bool, str]],
        interval: float,
        status_every: float = 10.0,
    ) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds (got {interval!r})")
        if not (status_every >= 0 and math.isfinite(status_every)):
            raise ValueError(f"status_every must be >= 0 seconds (got {status_every!r})")
        super().__init__(name="sd-watchdog", daemon=True)
        self._notifier = notifier
        self._stop_event = stop
        self._healthy = healthy
        self._interval = float(interval)
        self._status_every = float(status_every)

    def _check(self, failed_before: bool) -> tuple[bool, str, bool]:
        """(ok, summary, callback_failed); a raising callback is unhealthy, logged once per streak."""
        try:
            ok, summary = self._healthy()
        except Exception as exc:  # any failure here means "not healthy"
            if not failed_before:
                log.exception("watchdog health check failed")
            return False, f"health check failed: {type(exc).__name__}: {exc}", True
        return bool(ok), str(summary), False

    def run(self) -> None:
        pinging = True  # so an unhealthy first check logs the WARNING
        callback_failed = False
        last_summary: str | None = None
        last_status_at = -math.inf
        while True:
            ok, summary, callback_failed = self._check(callback_failed)
            if ok:
                self._notifier.watchdog()
            if ok != pinging:
                if ok:
                    log.info("watchdog pings resumed: %s", summary)
                else:
                    log.warning("watchdog pings stopped (systemd restarts the service after WatchdogSec): %s", summary)
                pinging = ok
                last_status_at = -math.inf  # report a health flip at once
            now = time.monotonic()
            if summary != last_summary and now - last_status_at >= self._status_every:
                if self._notifier.status(summary):
                    last_summary = summary  # a failed send is retried after status_every
                last_status_at = now
            if self._stop_event.wait(self._interval):
                return
