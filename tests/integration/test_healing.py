"""Cameras heal themselves: `edgedet run` as a subprocess against a real mosquitto and a real
GStreamer RTSP server that is killed, hung (SIGSTOP), cut off (TCP proxy) or serves a frozen image.

Every wait polls /metrics or the MQTT messages against a deadline; the only fixed wait is the
5 s outage the restart scenario is about.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.daemoncfg import write_config
from tests.helpers import (
    LOOPBACK,
    DaemonProcess,
    Message,
    metrics_text,
    parse_metric,
    run_daemon,
    stop_daemon,
    topic_matches,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODE = "testnode"
START_S = 120.0  # daemon start (model load) to the first frame, on a loaded 2-core box


# --------------------------------------------------------------------------- helpers


def detections(messages: list[Message], camera: str) -> list[Message]:
    """Detection messages of ``camera`` (from the list a ``wait_for`` predicate gets)."""
    topic = f"edgedet/{NODE}/{camera}/detections"
    return [m for m in messages if topic_matches(topic, m.topic)]


def statuses(messages: list[Message], camera: str) -> list[bytes]:
    topic = f"edgedet/{NODE}/{camera}/status"
    return [m.payload for m in messages if m.topic == topic]


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from the daemon's /metrics; None while the endpoint is not up yet."""
    try:
        text = metrics_text(port)
    except OSError:
        return None
    return parse_metric(text, name, labels)


def wait_metric(
    port: int, name: str, labels: dict[str, str], ok: Callable[[float], bool], timeout: float, what: str,
    proc: DaemonProcess | None = None,
) -> float:
    """Poll /metrics until ``ok(value)``; fail early (with its output) if the daemon exits."""

    def check() -> tuple[float] | None:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode} while waiting for {what}:\n{proc.output()}")
        value = metric(port, name, **labels)
        return (value,) if value is not None and ok(value) else None

    try:
        return wait_for(check, timeout, what, interval=0.1)[0]
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} (last {name}{labels} = {metric(port, name, **labels)})") from None


def proc_status(pid: int) -> tuple[int, int]:
    """(threads, RSS in KiB) of a process, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


@contextlib.contextmanager
def daemon(cfg: Path) -> Iterator[DaemonProcess]:
    """The daemon for a test; stopped with SIGTERM at the end, and it must exit 0 cleanly."""
    proc = run_daemon(cfg)
    try:
        yield proc
    finally:
        code = stop_daemon(proc, timeout=10)
    assert code == 0, f"exit {code}\n{proc.output()}"
    assert "Traceback" not in proc.output(), proc.output()


class TcpProxy:
    """A TCP relay from 127.0.0.1:``port`` to ``target``, one thread over selectors. ``cut()``
    closes every relayed connection at once, like a network drop; ``accepted`` counts clients."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._peers: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._cut_requested = threading.Event()
        self._cut_done = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-tcp-proxy")
        self._thread.start()

    def cut(self, timeout: float = 5.0) -> None:
        self._cut_done.clear()
        self._cut_requested.set()
        if not self._cut_done.wait(timeout):
            raise TimeoutError(f"proxy did not cut its connections within {timeout} s")

    def close(self) -> None:
        self._done.set()
        self._thread.join(10)
        self._close_all()
        self._selector.close()
        self.listener.close()

    def _serve(self) -> None:
        while not self._done.is_set():
            if self._cut_requested.is_set():
                self._cut_requested.clear()
                self._close_all()
                self._cut_done.set()
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    self._accept()
                elif sock in self._peers:
                    self._relay(sock)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.settimeout(5)  # sendall to a stuck peer cannot block the relay forever
            self._selector.register(s, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client
        self.accepted += 1

    def _relay(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _close_all(self) -> None:
        for sock in list(self._peers):
            self._close_pair(sock)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


# --------------------------------------------------------------------------- RTSP server dies


def test_rtsp_server_restart_heals_without_operator(
    tmp_path: Path, mosquitto, rtsp_server, assets, mqtt_sub
) -> None:
    cfg, mport = write_config(
        tmp_path,
        {"live": {"url": rtsp_server.url, "stall_timeout_s": 5},
         "replay": {"url": str(assets.clip), "loop": True}},
        mosquitto.port,
    )
    sub = mqtt_sub(mosquitto, f"edgedet/{NODE}/#")
    live = {"camera": "live"}
    with daemon(cfg) as proc:
        sub.wait_for(lambda m: detections(m, "live") and detections(m, "replay"), timeout=START_S,
                     what="detections from both cameras")
        wait_metric(mport, "edgedet_camera_up", live, lambda v: v == 1, 10, "live up", proc)
        reconnects = metric(mport, "edgedet_camera_reconnects_total", **live)
        assert reconnects is not None

        t_down = time.monotonic()
        rtsp_server.stop()
        wait_metric(mport, "edgedet_camera_up", live, lambda v: v == 0, 20, "live down", proc)
        down_s = time.monotonic() - t_down
        sub.wait_message(f"edgedet/{NODE}/live/status", b"offline", timeout=10)
        late = mqtt_sub(mosquitto, f"edgedet/{NODE}/live/status")  # what a dashboard starting now sees
        assert late.wait_message(f"edgedet/{NODE}/live/status").payload == b"offline"
        # The scenario: the RTSP server stays away for 5 s, then comes back on the same port.
        threading.Event().wait(5)
        rtsp_server.start()
        t_back = time.monotonic()
        wait_metric(mport, "edgedet_camera_up", live, lambda v: v == 1, 60, "live up again", proc)
        reconnect_s = time.monotonic() - t_back

        sub.wait_for(lambda m: any(x.time > t_back for x in detections(m, "live")), timeout=30,
                     what="live detections after the restart")
        assert metric(mport, "edgedet_camera_reconnects_total", **live) > reconnects
        sub.wait_for(lambda m: b"online" in statuses(m, "live")[statuses(m, "live").index(b"offline"):],
                     timeout=10, what="live status offline, then online")
        late = mqtt_sub(mosquitto, f"edgedet/{NODE}/live/status")
        assert late.wait_message(f"edgedet/{NODE}/live/status").payload == b"online"  # retained
        during = [m for m in detections(sub.messages(), "replay") if t_down < m.time < t_back]
        assert len(during) >= 2, f"replay published {len(during)} messages during the outage"
        assert proc.output().count("camera live down:") == 1
    print(f"RTSP restart: down detected in {down_s:.2f} s, server back -> camera up in {reconnect_s:.2f} s; "
          f"replay kept publishing ({len(during)} messages during the {t_back - t_down:.1f} s outage)")


def test_hung_stream_is_detected_by_the_stall_timeout(tmp_path: Path, mosquitto, rtsp_server) -> None:
    cfg, mport = write_config(
        tmp_path, {"hung": {"url": rtsp_server.url, "stall_timeout_s": 3}}, mosquitto.port
    )
    cam = {"camera": "hung"}
    stall = {"camera": "hung", "kind": "stall"}
    with daemon(cfg) as proc:
        wait_metric(mport, "edgedet_camera_up", cam, lambda v: v == 1, START_S, "camera up", proc)
        stalls = metric(mport, "edgedet_capture_errors_total", **stall)
        assert stalls is not None
        rtsp_server.pause()  # SIGSTOP: the TCP connection stays open, no data flows
        t_pause = time.monotonic()
        try:
            wait_metric(mport, "edgedet_capture_errors_total", stall, lambda v: v > stalls, 15,
                        "a stall to be counted", proc)
            wait_metric(mport, "edgedet_camera_up", cam, lambda v: v == 0, 5, "camera down", proc)
            detect_s = time.monotonic() - t_pause
        finally:
            rtsp_server.resume()
        t_resume = time.monotonic()
        wait_metric(mport, "edgedet_camera_up", cam, lambda v: v == 1, 60, "camera up after resume", proc)
        back_s = time.monotonic() - t_resume
        assert "camera hung down: camera hung: no frame for" in proc.output()
    print(f"stall (stall_timeout_s 3): detected {detect_s:.2f} s after SIGSTOP, up {back_s:.2f} s after SIGCONT")


# --------------------------------------------------------------------------- frozen camera


def test_frozen_camera_is_reported_and_a_moving_one_is_not(
    tmp_path: Path, mosquitto, rtsp_server_factory, assets
) -> None:
    still = tmp_path / "still"
    still.mkdir()
    for i in range(25):  # one second of the same picture, looped by the server and re-encoded
        shutil.copyfile(assets.frames / "00000.jpg", still / f"{i:05d}.jpg")
    server = rtsp_server_factory(mounts={"still": still})  # /cam: the moving demo clip
    cfg, mport = write_config(
        tmp_path,
        {"still": {"url": server.urls["/still"], "frozen_after_s": 3},
         "moving": {"url": server.url, "frozen_after_s": 3}},
        mosquitto.port,
    )
    with daemon(cfg) as proc:
        wait_metric(mport, "edgedet_camera_frozen", {"camera": "still"}, lambda v: v == 1, START_S,
                    "the still camera to be reported frozen", proc)
        # The moving camera has had the same time to freeze, and 4 s more of frames.
        captured = metric(mport, "edgedet_frames_captured_total", camera="moving") or 0.0
        wait_metric(mport, "edgedet_frames_captured_total", {"camera": "moving"},
                    lambda v: v >= captured + 100, 60, "4 s more frames from the moving camera", proc)
        text = metrics_text(mport)
        assert parse_metric(text, "edgedet_camera_frozen", {"camera": "moving"}) == 0
        assert parse_metric(text, "edgedet_camera_frozen", {"camera": "still"}) == 1
        for name in ("still", "moving"):  # frozen is reported, never treated as a stall
            assert parse_metric(text, "edgedet_camera_up", {"camera": name}) == 1
            assert parse_metric(text, "edgedet_camera_reconnects_total", {"camera": name}) == 0
        log = proc.output()
        assert log.count("WARNING edgedet.capture: camera still frozen: identical frames for 3 s") == 1, log
        assert "camera moving frozen" not in log and "no longer frozen" not in log


# --------------------------------------------------------------------------- reconnect soak


def test_twenty_reconnects_leak_no_threads_or_memory(
    tmp_path: Path, mosquitto, rtsp_server, tcp_proxy
) -> None:
    """Each cycle drops the RTSP connection (TCP proxy) and waits until a new capture is open and
    delivering frames: 20 real FFmpeg open/read/release cycles against the real server."""
    proxy = tcp_proxy(rtsp_server.host, rtsp_server.port)
    url = f"rtsp://{LOOPBACK}:{proxy.port}{rtsp_server.path}"
    # Each session is cut before it is stable, so the backoff grows (issue 10 item 10): cap it at 1 s
    # to keep 22 cycles quick; the test is about leaks across real reconnects, not the backoff.
    cfg, mport = write_config(tmp_path, {"cyc": {"url": url, "stall_timeout_s": 3, "reconnect_max_s": 1}},
                              mosquitto.port)
    cam = {"camera": "cyc"}

    def cycle(proc: DaemonProcess) -> None:
        sessions = proxy.accepted
        proxy.cut()
        wait_for(lambda: proxy.accepted > sessions, 30, "the daemon to reconnect")
        captured = metric(mport, "edgedet_frames_captured_total", **cam) or 0.0
        wait_metric(mport, "edgedet_frames_captured_total", cam, lambda v: v > captured, 30,
                    "frames from the new connection", proc)
        wait_metric(mport, "edgedet_camera_up", cam, lambda v: v == 1, 5, "camera up", proc)

    with daemon(cfg) as proc:
        wait_metric(mport, "edgedet_camera_up", cam, lambda v: v == 1, START_S, "camera up", proc)
        for _ in range(2):  # warm-up: every lazily created thread and buffer exists
            cycle(proc)
        threads_before, rss_before = proc_status(proc.pid)
        reconnects = metric(mport, "edgedet_camera_reconnects_total", **cam) or 0.0
        started = time.monotonic()
        for _ in range(20):
            cycle(proc)
        elapsed = time.monotonic() - started
        threads_after, rss_after = proc_status(proc.pid)
        assert metric(mport, "edgedet_camera_reconnects_total", **cam) >= reconnects + 20
        log = proc.output()
        downs, ups = log.count("camera cyc down:"), log.count("camera cyc up:")
        assert downs >= 22 and ups == downs + 1, f"{downs} down / {ups} up lines: once per state change"
    print(f"20 reconnect cycles in {elapsed:.1f} s: threads {threads_before} -> {threads_after}, "
          f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB ({(rss_after / rss_before - 1) * 100:+.1f} %)")
    assert abs(threads_after - threads_before) <= 2
    assert rss_after <= rss_before * 1.15


# --------------------------------------------------------------------------- bad input


def make_corrupt_h264(src_frames: Path, out: Path) -> Path:
    """An H.264 mp4 (GStreamer x264) with garbage written over its middle half."""
    gst = shutil.which("gst-launch-1.0")
    if gst is None:
        missing("gst-launch-1.0 not installed (apt-get install gstreamer1.0-tools)")
    clean = out.with_name("clean-h264.mp4")
    subprocess.run(
        [gst, "-q", "multifilesrc", f"location={src_frames}/%05d.jpg", "index=0", "stop-index=49",
         "caps=image/jpeg,framerate=25/1", "!", "jpegdec", "!", "videoconvert", "!",
         "video/x-raw,format=I420", "!", "x264enc", "speed-preset=ultrafast", "key-int-max=25", "bframes=0",
         "!", "h264parse", "!", "mp4mux", "!", "filesink", f"location={clean}"],
        check=True, timeout=120, capture_output=True,
    )
    data = bytearray(clean.read_bytes())
    rng = random.Random(1)
    for offset in range(len(data) // 4, 3 * len(data) // 4, 4001):
        data[offset:offset + 40] = rng.randbytes(40)
    out.write_bytes(bytes(data))
    return out


def test_corrupt_and_truncated_files_are_counted_logged_once_and_never_crash(
    tmp_path: Path, mosquitto, assets, mqtt_sub
) -> None:
    clip = assets.clip.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip[: len(clip) // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(random.Random(7).randbytes(200_000))
    corrupt = make_corrupt_h264(assets.frames, tmp_path / "corrupt-h264.mp4")
    cfg, mport = write_config(
        tmp_path,
        {"truncated": {"url": str(truncated), "loop": True},
         "garbage": {"url": str(garbage), "loop": True},
         "corrupt": {"url": str(corrupt), "loop": True},
         "good": {"url": str(assets.clip), "loop": True}},
        mosquitto.port,
    )
    sub = mqtt_sub(mosquitto, f"edgedet/{NODE}/#")
    with daemon(cfg) as proc:
        sub.wait_for(lambda m: detections(m, "good"), timeout=START_S, what="detections from the good camera")
        for name in ("truncated", "garbage"):  # backoff 1, 2, 4 s (full jitter): 4 tries in < 8 s
            wait_metric(mport, "edgedet_capture_errors_total", {"camera": name, "kind": "open"},
                        lambda v: v >= 4, 30, f"4 failed opens of {name}", proc)
        t_errors = time.monotonic()
        sub.wait_for(lambda m: len([x for x in detections(m, "good") if x.time > t_errors]) >= 3, timeout=30,
                     what="the good camera to keep publishing")
        sub.wait_for(lambda m: detections(m, "corrupt"), timeout=30, what="detections from the corrupt file")
        assert proc.poll() is None
        text = metrics_text(mport)
        for name in ("truncated", "garbage"):
            assert parse_metric(text, "edgedet_camera_up", {"camera": name}) == 0
            assert parse_metric(text, "edgedet_camera_reconnects_total", {"camera": name}) >= 3
        log = proc.output()
    assert log.count(f"camera truncated down: cannot open {truncated}: not a readable video file") == 1, log
    assert log.count(f"camera garbage down: cannot open {garbage}: not a readable video file") == 1, log
    # FFmpeg/OpenCV print nothing per retry or per corrupt frame ("moov atom not found", "[h264 @").
    for noise in ("moov atom", "[h264 @", "VIDEOIO", "error while decoding"):
        assert noise not in log, f"{noise!r} in the daemon log:\n{log}"
    repeated = [line for line in set(log.splitlines()) if log.splitlines().count(line) > 1]
    assert not [line for line in repeated if "truncated" in line or "garbage" in line], repeated


def test_wrong_url_scheme_is_a_config_error(tmp_path: Path) -> None:
    cfg, _ = write_config(tmp_path, {"gate": {"url": "rstp://127.0.0.1:8554/cam"}}, 1883)
    proc = run_daemon(cfg)
    code = proc.wait(timeout=60)
    err = proc.stderr_text()
    assert code == 2, proc.output()
    assert "Traceback" not in proc.output()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cameras.gate.url" in lines[0] and "rstp://127.0.0.1:8554/cam" in lines[0], err
