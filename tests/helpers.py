"""Helpers shared by the test suites: ports, waiting with deadlines, processes, MQTT, metrics.

Everything talks to real components on 127.0.0.1. Nothing here sleeps to synchronise: waits poll
a condition until a deadline and raise ``TimeoutError`` naming what was awaited.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt import publish as mqtt_publish_mod
from prometheus_client.parser import text_string_to_metric_families

from edgedet.bench.live import RTSP_SCRIPT  # the bench's live row runs this same file

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


# --------------------------------------------------------------------------- waiting


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises ``TimeoutError("timed out after 5.0 s waiting for <what>")`` at the deadline. The
    predicate is always called at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        # A short poll interval inside a deadline-bounded wait, never a synchronisation sleep.
        time.sleep(min(interval, remaining))


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float) -> None:
    """Wait until ``host:port`` accepts TCP connections."""
    wait_for(lambda: port_open(host, port), timeout, f"{host}:{port} to accept connections")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` to ``proc`` by PID, wait up to ``timeout``, SIGKILL if still running.

    Returns the exit code (negative signal number when killed by a signal).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def is_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but ''/0/false/no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- the daemon


class DaemonProcess(subprocess.Popen[bytes]):
    """``subprocess.Popen`` of ``python -m edgedet run``; stdout/stderr go to files."""

    stdout_path: Path
    stderr_path: Path

    def output(self) -> str:
        """Everything the daemon wrote so far, stdout then stderr."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def stderr_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.stderr_path.read_text(errors="replace")
        return ""


def run_daemon(
    config_path: Path | str,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    log_dir: Path | str | None = None,
) -> DaemonProcess:
    """Start ``python -m edgedet run --config CONFIG [extra_args]`` like production does.

    ``env`` entries are added to (and override) the current environment. stdout and stderr go to
    ``daemon-<n>.stdout`` / ``.stderr`` in ``log_dir`` (default: the config's folder, normally
    ``tmp_path``); read them with ``proc.output()``. Stop it with ``stop_daemon(proc)``.
    """
    config_path = Path(config_path)
    folder = Path(log_dir) if log_dir is not None else config_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while (folder / f"daemon-{n}.stderr").exists():
        n += 1
    stdout_path = folder / f"daemon-{n}.stdout"
    stderr_path = folder / f"daemon-{n}.stderr"
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
    if env:
        full_env.update(env)
    cmd = [sys.executable, "-m", "edgedet", "run", "--config", str(config_path), *extra_args]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = DaemonProcess(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env, cwd=REPO)
    proc.stdout_path = stdout_path
    proc.stderr_path = stderr_path
    return proc


def stop_daemon(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM the daemon, wait up to ``timeout`` s (then SIGKILL); return its exit code."""
    return stop_process(proc, timeout=timeout)


# --------------------------------------------------------------------------- metrics


def metrics_text(port: int, host: str = LOOPBACK, timeout: float = 5.0) -> str:
    """GET http://host:port/metrics and return the body."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8")


def parse_metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """Value of the sample called ``name`` whose labels include ``labels``; None when absent.

    ``name`` is the sample name as exposed (``edgedet_frames_total``, ``..._bucket``, ``..._sum``).
    Raises ``ValueError`` when several samples match, listing them, so a test never reads the
    wrong series by accident.
    """
    wanted = dict(labels or {})
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                found.append(sample)
    if not found:
        return None
    if len(found) > 1:
        series = ", ".join(f"{s.name}{s.labels}" for s in found)
        raise ValueError(f"{len(found)} samples match {name}{wanted}: {series}; give more labels")
    return float(found[0].value)


# --------------------------------------------------------------------------- MQTT


class Broker(Protocol):
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    time: float  # time.monotonic() at arrival


def topic_matches(topic_filter: str, topic: str) -> bool:
    return bool(mqtt.topic_matches_sub(topic_filter, topic))


class MqttSubscriber:
    """A real paho-mqtt 2.x subscriber collecting every message it receives; connected and
    subscribed when the constructor returns.

    ``clean_session=False`` with a fixed ``client_id`` gives a persistent session: the broker
    queues QoS >= 1 messages while the client is away. paho reconnects on its own after a broker
    restart (1-2 s backoff); subscriptions are renewed when the broker lost the session.
    ``username``/``password`` log in; ``ca`` (and a client ``cert``/``key``) switch to TLS.
    """

    def __init__(
        self,
        broker: Broker,
        topic_filter: str,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.client_id = client_id or f"test-sub-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[Message] = []
        self._taken = 0  # messages already looked at by expect()
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._refused: str | None = None
        self.connects = 0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean_session
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None or cert is not None:
            self.client.tls_set(ca_certs=str(ca) if ca else None, certfile=str(cert) if cert else None,
                                keyfile=str(key) if key else None, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(
                f"MQTT subscriber {self.client_id} not subscribed to {topic_filter!r} on "
                f"{broker.host}:{broker.port} within {timeout:.1f} s (refused: {self._refused})"
            )

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            return
        with self._lock:
            self.connects += 1
        if flags.session_present and self._subscribed.is_set():
            return  # the broker kept our subscription (persistent session)
        _, mid = client.subscribe(self.topic_filter, qos=self.qos)
        self._sub_mid = mid

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._sub_mid and all(not r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos), time.monotonic())
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    def messages(self, topic_filter: str | None = None) -> list[Message]:
        """A snapshot of the messages received so far, optionally only those matching a filter."""
        with self._lock:
            snapshot = list(self._messages)
        if topic_filter is None:
            return snapshot
        return [m for m in snapshot if topic_matches(topic_filter, m.topic)]

    def wait_for(self, predicate: Callable[[list[Message]], T], timeout: float = 10.0, what: str = "") -> T:
        """Wait until ``predicate(messages)`` is truthy; return its value. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate(list(self._messages))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [(m.topic, m.payload[:80]) for m in self._messages[-10:]]
                    raise TimeoutError(
                        f"timed out after {timeout:.1f} s waiting for {what or 'MQTT messages'} on "
                        f"{self.topic_filter!r}; last messages: {got}"
                    )
                self._changed.wait(remaining)

    def wait_message(self, topic_filter: str, payload: bytes | None = None, timeout: float = 10.0) -> Message:
        """The first message on ``topic_filter`` (with exactly ``payload``, if given)."""

        def first(messages: list[Message]) -> Message | None:
            for m in messages:
                if topic_matches(topic_filter, m.topic) and (payload is None or m.payload == payload):
                    return m
            return None

        what = f"a message on {topic_filter!r}" + (
            f" with payload {payload!r}" if payload is not None else ""
        )
        found = self.wait_for(first, timeout, what)
        assert found is not None
        return found

    def expect(self, topic: str, payload: bytes | None = None, timeout: float = 10.0) -> Message:
        """The next message on exactly ``topic`` (with ``payload``, if given), after those that
        earlier calls looked at: a message is looked at once, so ``expect`` twice waits for two
        messages. Every message looked at on the way is kept in ``seen``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while self._taken < len(self._messages):
                    m = self._messages[self._taken]
                    self._taken += 1
                    if m.topic == topic and (payload is None or m.payload == payload):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = self._seen_locked()
                    raise TimeoutError(f"no {payload!r} on {topic} within {timeout:.1f} s; seen: {seen}")
                self._changed.wait(remaining)

    @property
    def seen(self) -> list[tuple[str, bytes, bool]]:
        """``(topic, payload, retain)`` of the messages ``expect`` has looked at, in order."""
        with self._lock:
            return self._seen_locked()

    def _seen_locked(self) -> list[tuple[str, bytes, bool]]:
        return [(m.topic, m.payload, m.retain) for m in self._messages[: self._taken]]

    def stop(self) -> None:
        """Disconnect and stop paho's network thread (joins it)."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def mqtt_publish(
    broker: Broker, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
) -> None:
    """Publish one message and wait for the broker's acknowledgement (QoS >= 1). No threads."""
    mqtt_publish_mod.single(
        topic,
        payload,
        qos=qos,
        retain=retain,
        hostname=broker.host,
        port=broker.port,
        client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
    )


# --------------------------------------------------------------------------- mosquitto

MOSQUITTO = Path("/usr/sbin/mosquitto")


class MosquittoBroker:
    """A real mosquitto on 127.0.0.1:``port`` with on-disk persistence under ``workdir``.

    ``stop()`` (SIGTERM, the broker saves its persistence file) and ``start()`` again on the
    same port and with the same persistence keep persistent sessions and queued QoS 1 messages.
    With ``persistence=False`` a restarted broker has forgotten everything (retained messages too).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_lines: tuple[str, ...] | list[str] = (),
        persistence: bool = True,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.workdir = workdir
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.stderr_path = workdir / "mosquitto.stderr"
        self.data_dir = workdir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            *([
                "persistence true",
                f"persistence_location {self.data_dir}/",
                "autosave_interval 1",
            ] if persistence else ["persistence false"]),
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # As root mosquitto drops to user 'mosquitto', which cannot write to workdir; naming
            # the current user keeps it as is (the option is ignored when not root).
            f"user {pwd_name()}",
            *extra_lines,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("mosquitto is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker (again) and wait until its port accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto already running as PID {self.pid}")
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        proc = self.proc
        try:
            wait_for(
                lambda: proc.poll() is not None or port_open(self.host, self.port),
                timeout,
                f"mosquitto to listen on {self.host}:{self.port}",
            )
        except TimeoutError as exc:
            self.kill()
            raise TimeoutError(f"{exc}\n{tail(self.log_text())}") from None
        if proc.poll() is not None:
            raise RuntimeError(
                f"mosquitto exited with code {proc.returncode} on start:\n{tail(self.log_text())}"
            )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    def kill(self) -> int | None:
        """SIGKILL by PID: no clean shutdown, nothing saved since the last autosave."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout=10, sig=signal.SIGKILL)

    def log_text(self) -> str:
        return read_text(self.log_path) + read_text(self.stderr_path)

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.running and self.proc else "stopped"
        return f"MosquittoBroker({self.host}:{self.port}, {state})"


def pwd_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# --------------------------------------------------------------------------- RTSP server

SYSTEM_PYTHON = Path("/usr/bin/python3")


def rtsp_check() -> tuple[bool, str]:
    """(usable, encoder element or the reason it is not) for edgedet/bench/rtsp_server.py."""
    if not SYSTEM_PYTHON.exists():
        return False, f"{SYSTEM_PYTHON} not found"
    result = subprocess.run(
        [str(SYSTEM_PYTHON), str(RTSP_SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        return False, tail(result.stderr, 5).strip() or f"exit code {result.returncode}"
    return True, result.stdout.strip()


class RtspServer:
    """edgedet/bench/rtsp_server.py under the system python, serving JPEG sequences over RTSP/H.264.

    ``url`` is the main mount (``/cam``); ``urls`` maps every mount path to its URL.
    """

    def __init__(
        self,
        workdir: Path,
        frames: Path,
        *,
        port: int | None = None,
        fps: float = 25,
        path: str = "/cam",
        mounts: Mapping[str, Path] | None = None,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.frames = frames
        self.fps = fps
        self.path = "/" + path.strip("/")
        self.mounts = dict(mounts or {})
        self.workdir = workdir
        self.log_path = workdir / "rtsp_server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"

    @property
    def urls(self) -> dict[str, str]:
        paths = [self.path, *("/" + name.strip("/") for name in self.mounts)]
        return {p: f"rtsp://{self.host}:{self.port}{p}" for p in paths}

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("rtsp_server is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start (again, on the same port) and wait for the ``READY`` line."""
        if self.running:
            raise RuntimeError(f"rtsp_server already running as PID {self.pid}")
        cmd = [
            str(SYSTEM_PYTHON),
            str(RTSP_SCRIPT),
            "--port",
            str(self.port),
            "--frames",
            str(self.frames),
            "--fps",
            str(self.fps),
            "--path",
            self.path,
        ]
        for name, folder in self.mounts.items():
            cmd += ["--mount", f"{name}={folder}"]
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        self.paused = False
        try:
            line = self._read_ready(self.proc, timeout)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        expected = self.url
        if expected not in line.split():
            self.stop()
            raise RuntimeError(f"rtsp_server announced {line!r}, expected {expected}")

    def _read_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> str:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                for raw in buffer.split(b"\n")[:-1]:
                    line = raw.decode(errors="replace").strip()
                    if line.startswith("READY "):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"rtsp_server printed no READY line within {timeout:.1f} s:\n{tail(self.log_text())}"
                    )
                if selector.select(remaining):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        proc.wait(timeout=10)
                        raise RuntimeError(
                            f"rtsp_server exited with code {proc.returncode} before READY:\n"
                            f"{tail(self.log_text())}"
                        )
                    buffer += chunk

    def pause(self) -> None:
        """SIGSTOP the server: the TCP connections stay open but no data flows."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID (resuming it first if paused), wait, SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.paused and self.proc.poll() is None:
            self.resume()
        code = stop_process(self.proc, timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def log_text(self) -> str:
        return read_text(self.log_path)

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.running and self.proc else "stopped"
        return f"RtspServer({self.url}, {state})"


# --------------------------------------------------------------------------- small utilities


def read_text(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        return path.read_text(errors="replace")
    return ""


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
