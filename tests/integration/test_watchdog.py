"""The daemon's own sd_notify traffic, read from a real AF_UNIX datagram socket standing in for
systemd: READY after the model load, WATCHDOG pings while frames flow, STATUS lines, STOPPING on
SIGTERM; and pings that go on while the only camera is unreachable (a wedged daemon stops them:
tests/unit/test_health.py)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import healthz
from tests.daemoncfg import write_config
from tests.helpers import DaemonProcess, free_port, run_daemon, stop_daemon

pytestmark = pytest.mark.integration

NODE = "testnode"
WATCHDOG_USEC = "2000000"  # -> a health check (and a ping when healthy) every 1 s
STARTUP_S = 120.0  # model load on a busy 2-core box
DEADLINE_S = 15.0
GRACE_S = 3.0
SILENCE_WINDOW_S = 5.0  # five ping intervals with no ping once unhealthy


@dataclass(frozen=True, slots=True)
class Notification:
    at: float  # time.monotonic() on receipt
    fields: tuple[tuple[str, str], ...]  # KEY=value lines in order

    def has(self, key: str, value: str | None = None) -> bool:
        return any(k == key and (value is None or v == value) for k, v in self.fields)

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.fields if k == key), None)


class FakeSystemd:
    """The manager's end of $NOTIFY_SOCKET. Keeps every datagram received, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[Notification] = []

    def _recv(self, timeout: float) -> Notification | None:
        """One datagram, or None when nothing arrived within ``timeout`` (a blocking receive)."""
        self.sock.settimeout(max(timeout, 1e-3))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        lines = [line.partition("=") for line in data.decode().split("\n")]
        note = Notification(time.monotonic(), tuple((key, value) for key, sep, value in lines if sep))
        self.received.append(note)
        return note

    def wait(self, predicate: Callable[[Notification], bool], timeout: float, what: str,
             proc: DaemonProcess | None = None) -> Notification:
        """Receive until a notification matches (it is returned); TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log = f"\n--- daemon output:\n{proc.output()[-3000:]}" if proc is not None else ""
                raise TimeoutError(f"no {what} within {timeout:.0f} s; received {self.texts()}{log}")
            note = self._recv(min(remaining, 1.0))
            if note is not None and predicate(note):
                return note
            if note is None and proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode} before {what}:\n{proc.output()[-3000:]}")

    def collect(self, seconds: float) -> list[Notification]:
        """Everything that arrives within the next ``seconds`` (absence is asserted over a window)."""
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            note = self._recv(remaining)
            if note is not None:
                got.append(note)
        return got

    def texts(self, last: int = 12) -> list[str]:
        return ["\\n".join(f"{k}={v}" for k, v in n.fields) for n in self.received[-last:]]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    # systemd sets WATCHDOG_PID to the main pid; unset, the daemon takes the watchdog as its own.
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def notify_env(systemd: FakeSystemd) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": WATCHDOG_USEC}


def is_ping(n: Notification) -> bool:
    return n.has("WATCHDOG", "1")


def test_ready_pings_status_and_stopping(tmp_path: Path, mosquitto, mqtt_sub, assets, systemd: FakeSystemd):
    cfg, _ = write_config(tmp_path, {"clip": {"url": str(assets.clip), "loop": True}}, mosquitto.port)
    topic = f"edgedet/{NODE}/clip/detections"
    sub = mqtt_sub(mosquitto, topic)
    proc = run_daemon(cfg, env=notify_env(systemd))
    try:
        ready = systemd.wait(lambda n: n.has("READY", "1"), STARTUP_S, "READY=1", proc)
        # Sent after the model load: its log line is already written (unbuffered stderr).
        assert "worker(s) x" in proc.stderr_text(), proc.output()
        assert ready.get("STATUS") == "1 camera(s), model demo"

        sub.wait_message(topic, timeout=60)  # frames flow
        flowing = len(sub.messages(topic))
        first = len(systemd.received)
        systemd.wait(lambda _n: sum(map(is_ping, systemd.received[first:])) >= 3, DEADLINE_S,
                     "3 WATCHDOG=1 pings while frames flow", proc)
        assert len(sub.messages(topic)) > flowing, "frames stopped flowing during the pings"
        statuses = [n.get("STATUS") for n in systemd.received if n.has("STATUS")]
        assert any(s and "live camera(s)" in s and "frame(s) processed" in s for s in statuses), statuses

        os.kill(proc.pid, signal.SIGTERM)
        systemd.wait(lambda n: n.has("STOPPING", "1"), DEADLINE_S, "STOPPING=1")
        code = proc.wait(timeout=DEADLINE_S)
    finally:
        stop_daemon(proc)
    assert code == 0, proc.output()
    assert "watchdog pings stopped" not in proc.output()


def test_pings_go_on_while_the_only_camera_is_unreachable(tmp_path: Path, mosquitto, systemd: FakeSystemd):
    """A dead network is not a wedged daemon (issue 10): restarting cannot fix it, so pings continue
    well past ``watchdog_grace_s`` while the camera is reported down in /healthz."""
    dead = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens there
    cfg, metrics_port = write_config(tmp_path, {"gate": {"url": dead}}, mosquitto.port, watchdog_grace_s=GRACE_S)
    proc = run_daemon(cfg, env=notify_env(systemd))
    try:
        ready = systemd.wait(lambda n: n.has("READY", "1"), STARTUP_S, "READY=1", proc)
        after_grace = systemd.collect(GRACE_S + SILENCE_WINDOW_S)  # the grace and five ping intervals more
        pings = [n for n in after_grace if is_ping(n) and n.at - ready.at > GRACE_S]
        assert len(pings) >= 3, f"pings stopped although only the camera is down: {systemd.texts()}"
        status, body = healthz(metrics_port)
        assert status == 503 and "camera gate: no frame yet" in body["reason"], body

        os.kill(proc.pid, signal.SIGTERM)
        systemd.wait(lambda n: n.has("STOPPING", "1"), DEADLINE_S, "STOPPING=1")
        code = proc.wait(timeout=DEADLINE_S)
    finally:
        stop_daemon(proc)
    assert code == 0, proc.output()
    assert "watchdog pings stopped" not in proc.stderr_text()
