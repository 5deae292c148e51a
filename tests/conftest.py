"""Shared fixtures: demo assets, real mosquitto brokers, MQTT subscribers, an RTSP server, and a
check that fails any test leaking threads.

Servers run on free 127.0.0.1 ports, are started by fixtures and stopped by PID. Importable
helpers (``wait_for``, ``run_daemon``, ``parse_metric``, ...) live in ``tests/helpers.py``.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    MOSQUITTO,
    REPO,
    Broker,
    MosquittoBroker,
    MqttSubscriber,
    RtspServer,
    is_ci,
    rtsp_check,
    tail,
)

DEMO_DIR = REPO / ".cache" / "demo"
THREAD_LEAK_GRACE_S = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real external components (broker, RTSP, ...)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line(
        "markers", "allow_thread_leak: do not fail this test when it leaves threads running"
    )


def missing(reason: str) -> None:
    """Skip on a developer machine; fail on CI, where every system dependency must be present."""
    if is_ci():
        pytest.fail(f"{reason} (CI is set: run scripts/ci-deps.sh)", pytrace=False)
    pytest.skip(f"{reason} (run scripts/ci-deps.sh as root)")


# --------------------------------------------------------------------------- thread leaks


@pytest.fixture(autouse=True)
def thread_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves behind threads it started (after a grace period for them to end).

    Runs outermost among function fixtures, so fixtures' own teardown (stopping subscribers,
    servers) has happened before the check. Threads created outside Python (``_DummyThread``)
    are ignored. Opt out with ``@pytest.mark.allow_thread_leak``.
    """
    before = set(threading.enumerate())
    yield
    if request.node.get_closest_marker("allow_thread_leak") is not None:
        return

    def leaked() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not isinstance(t, threading._DummyThread)
        ]

    deadline = time.monotonic() + THREAD_LEAK_GRACE_S
    for thread in leaked():
        thread.join(max(0.0, deadline - time.monotonic()))
    still = leaked()
    if still:
        names = ", ".join(f"{t.name!r} (daemon={t.daemon})" for t in still)
        pytest.fail(
            f"test leaked {len(still)} thread(s) still alive {THREAD_LEAK_GRACE_S:.0f} s after it ended: "
            f"{names}; stop them in the test or its fixtures, or mark it allow_thread_leak",
            pytrace=False,
        )


# --------------------------------------------------------------------------- assets


@dataclass(frozen=True, slots=True)
class Assets:
    """Files made by scripts/make_clip.py (see its docstring)."""

    dir: Path
    bus: Path  # 810x1080 photo, people and a bus
    zidane: Path  # 1280x720 photo, two people
    clip: Path  # demo.mp4, 12 s, 25 fps, 1280x720, people in every frame
    frames: Path  # the frames of demo.mp4 as 00000.jpg ...
    enter_leave: Path  # enter_leave.mp4, 10 s: person 0-3 s, nobody 3-7 s, person 7-10 s
    enter_leave_segments: tuple[Mapping[str, Any], ...]  # from enter_leave.json
    fps: float = 25.0
    size: tuple[int, int] = (1280, 720)


@pytest.fixture(scope="session")
def assets() -> Assets:
    """Demo media under <repo>/.cache/demo, generated once (idempotent, safe across workers)."""
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    with open(DEMO_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "make_clip.py"), "--out-dir", str(DEMO_DIR)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if result.returncode != 0:
        pytest.fail(f"scripts/make_clip.py failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    meta = json.loads((DEMO_DIR / "enter_leave.json").read_text())
    return Assets(
        dir=DEMO_DIR,
        bus=DEMO_DIR / "bus.jpg",
        zidane=DEMO_DIR / "zidane.jpg",
        clip=DEMO_DIR / "demo.mp4",
        frames=DEMO_DIR / "frames",
        enter_leave=DEMO_DIR / "enter_leave.mp4",
        enter_leave_segments=tuple(meta["segments"]),
        fps=float(meta["fps"]),
        size=(int(meta["width"]), int(meta["height"])),
    )


# --------------------------------------------------------------------------- mosquitto


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """``make(extra_lines=(), port=None, start=True, persistence=True) -> MosquittoBroker``; all
    stopped at teardown.

    Each broker gets its own folder (config, log, persistence) under tmp_path.
    """
    if not MOSQUITTO.exists():
        missing(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    brokers: list[MosquittoBroker] = []

    def make(
        extra_lines: tuple[str, ...] | list[str] = (),
        port: int | None = None,
        start: bool = True,
        persistence: bool = True,
    ) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"mosquitto-{len(brokers)}", port=port, extra_lines=extra_lines,
                                 persistence=persistence)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A running broker: ``.host .port .pid .stop() .kill() .start() .log_text()``."""
    return mosquitto_factory()


@pytest.fixture
def mqtt_sub() -> Iterator[Callable[..., MqttSubscriber]]:
    """``make(broker, topic_filter, *, client_id=None, clean_session=True, qos=1, username=None,
    password=None, ca=None, cert=None, key=None) -> MqttSubscriber``.

    The subscriber is connected and subscribed when returned; all are stopped at teardown.
    """
    subs: list[MqttSubscriber] = []

    def make(broker: Broker, topic_filter: str = "#", **kwargs: Any) -> MqttSubscriber:
        sub = MqttSubscriber(broker, topic_filter, **kwargs)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.stop()


# --------------------------------------------------------------------------- RTSP


_rtsp_status: list[tuple[bool, str]] = []


def require_rtsp() -> str:
    """The H.264 encoder element rtsp_server.py will use; skip (fail on CI) when unusable."""
    if not _rtsp_status:
        _rtsp_status.append(rtsp_check())
    usable, detail = _rtsp_status[0]
    if not usable:
        missing(f"edgedet/bench/rtsp_server.py cannot run under /usr/bin/python3: {detail}")
    return detail


@pytest.fixture
def rtsp_server_factory(tmp_path: Path, assets: Assets) -> Iterator[Callable[..., RtspServer]]:
    """``make(frames=assets.frames, *, port=None, fps=25, path="/cam", mounts=None, start=True)``."""
    require_rtsp()
    servers: list[RtspServer] = []

    def make(frames: Path | None = None, *, start: bool = True, **kwargs: Any) -> RtspServer:
        server = RtspServer(tmp_path / f"rtsp-{len(servers)}", frames or assets.frames, **kwargs)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        code = server.stop()
        if code not in (None, 0):
            # A crash of the server would explain odd test failures; surface it.
            print(f"rtsp_server exited with {code}:\n{tail(server.log_text())}", file=sys.stderr)


@pytest.fixture
def rtsp_server(rtsp_server_factory: Callable[..., RtspServer]) -> RtspServer:
    """A running server at ``.url`` (rtsp://127.0.0.1:<port>/cam) looping assets.frames at 25 fps.

    ``.pid .port .stop() .start() .pause() (SIGSTOP) .resume() (SIGCONT) .log_text()``.
    """
    return rtsp_server_factory()
