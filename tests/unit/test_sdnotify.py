"""sd_notify: a real AF_UNIX datagram socket stands in for systemd."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgedet.sdnotify import Notifier, WatchdogThread, watchdog_interval

DEADLINE_S = 5.0


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: one decoded datagram per message."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def recv(self, timeout: float = DEADLINE_S) -> str:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no notification within {timeout}s") from None

    def wait_for(self, wanted: str, timeout: float = DEADLINE_S) -> list[str]:
        """Messages up to and including the first equal to ``wanted``."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{wanted!r} not received within {timeout}s; got {seen}")
            seen.append(self.recv(remaining))
            if seen[-1] == wanted:
                return seen

    def drain(self) -> list[str]:
        """Every message already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    path = str(tmp_path / "notify.sock")
    assert len(path) < 108, f"socket path too long for AF_UNIX: {path}"
    return path


@pytest.fixture
def systemd(sock_path: str) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(sock_path)
    yield fake
    fake.close()


@pytest.fixture
def notifier(sock_path: str, systemd: FakeSystemd) -> Iterator[Notifier]:
    n = Notifier(sock_path)
    yield n
    n.close()


# --------------------------------------------------------------------------- Notifier


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda n: n.ready(), "READY=1"),
        (lambda n: n.ready("2 cameras, 1 worker"), "READY=1\nSTATUS=2 cameras, 1 worker"),
        (lambda n: n.status("camera gate: down"), "STATUS=camera gate: down"),
        (lambda n: n.watchdog(), "WATCHDOG=1"),
        (lambda n: n.stopping(), "STOPPING=1"),
        (lambda n: n.stopping("shutting down"), "STOPPING=1\nSTATUS=shutting down"),
        (lambda n: n.notify(STATUS="a\nb\r\nc"), "STATUS=a b  c"),
        (lambda n: n.notify(READY=True, ERRNO=5), "READY=1\nERRNO=5"),
        (lambda n: n.send("EXTEND_TIMEOUT_USEC=60000000"), "EXTEND_TIMEOUT_USEC=60000000"),
        (lambda n: n.status("Kamera Tor: läuft"), "STATUS=Kamera Tor: läuft"),
    ],
)
def test_messages_have_exact_protocol_text(
    notifier: Notifier, systemd: FakeSystemd, send: Callable[[Notifier], bool], expected: str
) -> None:
    assert send(notifier) is True
    assert systemd.recv() == expected
    assert systemd.drain() == []


def test_reloading_sends_monotonic_usec(notifier: Notifier, systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=([0-9]+)", systemd.recv())
    assert m is not None
    assert before <= int(m.group(1)) <= after


def test_socket_defaults_to_notify_socket_env(
    monkeypatch: pytest.MonkeyPatch, sock_path: str, systemd: FakeSystemd
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    n = Notifier()
    assert n.enabled
    assert n.ready("up")
    assert systemd.recv() == "READY=1\nSTATUS=up"
    n.close()


def test_abstract_socket_name() -> None:
    name = f"edgedet-test-{os.getpid()}-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    n = Notifier("@" + name)
    try:
        assert n.enabled
        assert n.watchdog()
        assert fake.recv() == "WATCHDOG=1"
    finally:
        n.close()
        fake.close()


@pytest.mark.parametrize("name", [None, ""])
def test_no_socket_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str | None
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    caplog.set_level(logging.DEBUG, logger="edgedet.sdnotify")
    n = Notifier(name)
    assert not n.enabled
    results = [n.ready("x"), n.status("x"), n.watchdog(), n.stopping(), n.reloading(), n.notify(A=1), n.send("A=1")]
    assert results == [False] * len(results)
    n.close()
    assert caplog.records == []
    assert repr(n) == "Notifier(disabled)"


def test_relative_socket_name_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgedet.sdnotify")
    n = Notifier("relative/notify.sock")
    assert not n.enabled
    assert not n.ready()
    assert [r.getMessage() for r in caplog.records] == [
        "NOTIFY_SOCKET='relative/notify.sock' is neither an absolute path nor an abstract '@name'; "
        "systemd notifications disabled"
    ]


def test_send_failure_logged_once_never_raises(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgedet.sdnotify")
    n = Notifier(sock_path)  # nothing listens there yet
    assert n.enabled
    assert [n.watchdog() for _ in range(5)] == [False] * 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert sock_path in warnings[0].getMessage()

    fake = FakeSystemd(sock_path)  # systemd is back
    try:
        assert n.watchdog()
        assert fake.recv() == "WATCHDOG=1"
        assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    finally:
        n.close()
        fake.close()


# --------------------------------------------------------------------------- watchdog_interval


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("3000000", "other", None),
        ("1", None, 0.0000005),
        (" 20000000\n", None, 10.0),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
        ("", None, None),
        ("30000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval_from_env(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(key, value)
    assert watchdog_interval() == expected


def test_watchdog_interval_from_mapping() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({}) is None


# --------------------------------------------------------------------------- WatchdogThread


class Health:
    """A ``healthy()`` callback the test flips; counts calls so tests can wait for ticks."""

    def __init__(self, ok: bool = True, summary: str = "ok") -> None:
        self._cond = threading.Condition()
        self._ok = ok
        self._summary = summary
        self._error: Exception | None = None
        self.calls = 0

    def set(self, ok: bool, summary: str, error: Exception | None = None) -> None:
        with self._cond:
            self._ok, self._summary, self._error = ok, summary, error

    def __call__(self) -> tuple[bool, str]:
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            if self._error is not None:
                raise self._error
            return self._ok, self._summary

    def wait_calls(self, n: int, timeout: float = DEADLINE_S) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls >= n, timeout), f"only {self.calls} health checks"

    def more_ticks(self, n: int = 3) -> None:
        """Wait until ``n`` more checks started: every earlier tick's messages have been sent."""
        with self._cond:
            target = self.calls + n
        self.wait_calls(target)


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


@pytest.fixture
def start_watchdog(stop: threading.Event) -> Iterator[Callable[..., WatchdogThread]]:
    threads: list[WatchdogThread] = []

    def start(notifier: Notifier, health: Health, interval: float = 0.01, status_every: float = 0.0) -> WatchdogThread:
        t = WatchdogThread(notifier, stop, health, interval, status_every=status_every)
        t.start()
        threads.append(t)
        return t

    yield start
    stop.set()
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive(), f"{t.name} did not stop"


def test_watchdog_pings_only_while_healthy(
    notifier: Notifier,
    systemd: FakeSystemd,
    stop: threading.Event,
    start_watchdog: Callable[..., WatchdogThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgedet.sdnotify")
    health = Health(True, "2 cameras ok")
    t = start_watchdog(notifier, health)
    assert t.name == "sd-watchdog"
    assert t.daemon
    first = systemd.wait_for("STATUS=2 cameras ok")
    assert first == ["WATCHDOG=1", "STATUS=2 cameras ok"]
    health.more_ticks()
    assert "WATCHDOG=1" in systemd.drain()

    health.set(False, "camera gate: last frame 42.0s ago")
    systemd.wait_for("STATUS=camera gate: last frame 42.0s ago")
    health.more_ticks(5)
    assert "WATCHDOG=1" not in systemd.drain()

    health.set(True, "2 cameras ok")
    after = systemd.wait_for("STATUS=2 cameras ok")
    assert after[-2:] == ["WATCHDOG=1", "STATUS=2 cameras ok"]
    health.more_ticks()
    assert "WATCHDOG=1" in systemd.drain()

    stop.set()
    t.join(DEADLINE_S)
    assert not t.is_alive()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "watchdog pings stopped (systemd restarts the service after WatchdogSec): "
                    "camera gate: last frame 42.0s ago"),
        ("INFO", "watchdog pings resumed: 2 cameras ok"),
    ]


def test_status_rate_limited_but_health_flips_reported_at_once(
    notifier: Notifier, systemd: FakeSystemd, start_watchdog: Callable[..., WatchdogThread]
) -> None:
    health = Health(True, "frames=1")
    start_watchdog(notifier, health, status_every=3600.0)
    assert systemd.wait_for("STATUS=frames=1") == ["WATCHDOG=1", "STATUS=frames=1"]
    for i in range(2, 5):  # the summary changes every tick, but STATUS waits for status_every
        health.set(True, f"frames={i}")
        health.more_ticks(2)
    assert set(systemd.drain()) == {"WATCHDOG=1"}

    health.set(False, "inference worker infer:0 died")
    systemd.wait_for("STATUS=inference worker infer:0 died")
    health.set(False, "still broken, new words")
    health.more_ticks(3)
    assert systemd.drain() == []


def test_unchanged_summary_is_not_resent(
    notifier: Notifier, systemd: FakeSystemd, start_watchdog: Callable[..., WatchdogThread]
) -> None:
    health = Health(True, "steady")
    start_watchdog(notifier, health, status_every=0.0)
    systemd.wait_for("STATUS=steady")
    health.more_ticks(4)
    assert set(systemd.drain()) == {"WATCHDOG=1"}


def test_raising_health_check_is_unhealthy_and_logged_once(
    notifier: Notifier,
    systemd: FakeSystemd,
    start_watchdog: Callable[..., WatchdogThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgedet.sdnotify")
    health = Health()
    health.set(False, "", RuntimeError("boom"))
    start_watchdog(notifier, health)
    systemd.wait_for("STATUS=health check failed: RuntimeError: boom")
    health.more_ticks(4)
    assert "WATCHDOG=1" not in systemd.drain()
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
    assert caplog.records[0].exc_info is not None

    health.set(True, "recovered")
    systemd.wait_for("STATUS=recovered")


def test_stop_event_ends_a_long_wait_promptly(
    notifier: Notifier, systemd: FakeSystemd, stop: threading.Event, start_watchdog: Callable[..., WatchdogThread]
) -> None:
    health = Health()
    t = start_watchdog(notifier, health, interval=3600.0)
    systemd.wait_for("STATUS=ok")
    t0 = time.monotonic()
    stop.set()
    t.join(DEADLINE_S)
    assert not t.is_alive()
    assert time.monotonic() - t0 < DEADLINE_S
    assert health.calls == 1


def test_watchdog_thread_with_disabled_notifier(
    monkeypatch: pytest.MonkeyPatch, start_watchdog: Callable[..., WatchdogThread]
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    health = Health()
    start_watchdog(Notifier(), health)
    health.wait_calls(3)


@pytest.mark.parametrize(
    ("interval", "status_every"), [(0, 10.0), (-1, 10.0), (float("nan"), 10.0), (float("inf"), 10.0), (1.0, -1.0)]
)
def test_watchdog_thread_rejects_bad_intervals(stop: threading.Event, interval: float, status_every: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        WatchdogThread(Notifier(""), stop, Health(), interval, status_every=status_every)
