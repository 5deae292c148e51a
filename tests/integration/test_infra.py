"""The test infrastructure itself, against the real components: mosquitto, paho subscribers,
the GStreamer RTSP server read by OpenCV/FFmpeg, the demo assets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import cv2
import pytest

from tests.conftest import Assets
from tests.helpers import (
    MosquittoBroker,
    MqttSubscriber,
    RtspServer,
    mqtt_publish,
    parse_metric,
    port_open,
    wait_for,
)

pytestmark = pytest.mark.integration

# FFmpeg's RTSP demuxer over TCP; `timeout` is its socket I/O timeout in microseconds.
FFMPEG_OPTIONS = "rtsp_transport;tcp|timeout;3000000"
OPEN_TIMEOUT_MS = 10_000


@pytest.fixture
def ffmpeg_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV reads OPENCV_FFMPEG_CAPTURE_OPTIONS when a capture is opened."""
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)


def open_capture(url: str, read_timeout_ms: int) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms],
    )
    if not cap.isOpened():
        cap.release()
        pytest.fail(f"cv2.VideoCapture could not open {url}")
    return cap


@pytest.fixture
def capture() -> Iterator[Callable[[str, int], cv2.VideoCapture]]:
    caps: list[cv2.VideoCapture] = []

    def make(url: str, read_timeout_ms: int = 5000) -> cv2.VideoCapture:
        cap = open_capture(url, read_timeout_ms)
        caps.append(cap)
        return cap

    yield make
    for cap in caps:
        cap.release()


# --------------------------------------------------------------------------- MQTT


def test_publish_subscribe_round_trip_and_retained_for_a_late_subscriber(
    mosquitto: MosquittoBroker, mqtt_sub: Callable[..., MqttSubscriber]
) -> None:
    early = mqtt_sub(mosquitto, "infra/#")
    mqtt_publish(mosquitto, "infra/plain", b"hello", qos=1)
    mqtt_publish(mosquitto, "infra/state", b"online", qos=1, retain=True)

    live = early.wait_message("infra/state", b"online")
    assert early.wait_message("infra/plain").payload == b"hello"
    assert live.retain is False  # delivered live, not from the retained store

    late = mqtt_sub(mosquitto, "infra/#")
    retained = late.wait_message("infra/state")
    assert (retained.payload, retained.retain) == (b"online", True)
    assert late.messages("infra/plain") == []  # non-retained messages are not replayed


def test_persistent_session_gets_qos1_sent_while_offline_across_a_broker_restart(
    mosquitto: MosquittoBroker, mqtt_sub: Callable[..., MqttSubscriber]
) -> None:
    client_id = "infra-persistent"
    first = mqtt_sub(mosquitto, "alarms/#", client_id=client_id, clean_session=False, qos=1)
    first.stop()

    mqtt_publish(mosquitto, "alarms/gate", b"while-offline", qos=1)
    port, old_pid = mosquitto.port, mosquitto.pid
    assert mosquitto.stop() == 0
    assert not port_open(mosquitto.host, port)
    mosquitto.start()
    assert (mosquitto.port, mosquitto.pid != old_pid) == (port, True)

    again = mqtt_sub(mosquitto, "alarms/#", client_id=client_id, clean_session=False, qos=1)
    message = again.wait_message("alarms/gate", b"while-offline")
    assert message.qos == 1
    assert "infra-persistent" in mosquitto.log_text()


def test_connected_subscriber_reconnects_after_broker_restart(
    mosquitto: MosquittoBroker, mqtt_sub: Callable[..., MqttSubscriber]
) -> None:
    sub = mqtt_sub(mosquitto, "infra/#", client_id="infra-reconnect", clean_session=False)
    mosquitto.stop()
    mosquitto.start()
    wait_for(lambda: sub.connects >= 2, 15, "the subscriber to reconnect")
    mqtt_publish(mosquitto, "infra/after", b"restart", qos=1)
    assert sub.wait_message("infra/after").payload == b"restart"


def test_factory_makes_independent_brokers_with_extra_config(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    plain = mosquitto_factory()
    strict = mosquitto_factory(["max_keepalive 30"])
    assert plain.port != strict.port and plain.pid != strict.pid
    assert "max_keepalive 30" in strict.conf_path.read_text()
    strict.kill()
    assert not strict.running and plain.running


# --------------------------------------------------------------------------- RTSP


@pytest.mark.usefixtures("ffmpeg_options")
def test_rtsp_server_streams_1280x720_in_real_time(
    rtsp_server: RtspServer, capture: Callable[..., cv2.VideoCapture]
) -> None:
    cap = capture(rtsp_server.url)
    deadline = time.monotonic() + 20
    for _ in range(25):  # the first second or so arrives in a burst: FFmpeg probes before returning
        ok, frame = cap.read()
        assert ok, "read failed before 25 frames"
        assert frame.shape == (720, 1280, 3)

    # Drain what was buffered while opening: wait for a read that actually waited for the network.
    while True:
        started = time.monotonic()
        ok, _ = cap.read()
        assert ok and started < deadline, "stream ended or never settled to real time"
        if time.monotonic() - started > 0.015:
            break

    count, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 2.0:
        ok, _ = cap.read()
        assert ok and time.monotonic() < deadline, f"read failed after {count} timed frames"
        count += 1
    fps = count / (time.monotonic() - t0)
    assert 15 <= fps <= 35, f"{count} frames in ~2 s = {fps:.1f} fps, expected about 25 (real time)"


class Reader:
    """Reads a capture on a thread, recording the arrival time of every frame."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self.cap = cap
        self.times: list[float] = []
        self.failed_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test:rtsp-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            ok, _ = self.cap.read()
            if not ok:
                self.failed_at = time.monotonic()
                return
            self.times.append(time.monotonic())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "reader thread did not stop"


@pytest.mark.usefixtures("ffmpeg_options")
def test_paused_server_stalls_reads_and_resume_continues_the_same_stream(
    rtsp_server: RtspServer, capture: Callable[..., cv2.VideoCapture]
) -> None:
    reader = Reader(capture(rtsp_server.url, read_timeout_ms=20_000))
    try:
        wait_for(lambda: len(reader.times) >= 25, 20, "25 frames before pausing")
        rtsp_server.pause()
        paused_at = time.monotonic()

        def stalled() -> bool:  # no frame for 1.5 s (frames normally come every 40 ms)
            return bool(reader.times) and time.monotonic() - reader.times[-1] >= 1.5

        wait_for(stalled, 10, "reads to stall while the server is stopped")
        assert reader.failed_at is None
        before = len(reader.times)
        rtsp_server.resume()
        wait_for(lambda: len(reader.times) >= before + 25, 15, "25 more frames after resume")
        assert reader.failed_at is None
        assert reader.times[before] > paused_at
    finally:
        if rtsp_server.paused:
            rtsp_server.resume()
        reader.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "options, params",
    [
        pytest.param(FFMPEG_OPTIONS, 30_000, id="ffmpeg-socket-timeout-3s"),
        pytest.param("rtsp_transport;tcp", 2_000, id="opencv-read-timeout-2s"),
    ],
)
def test_read_times_out_while_paused_and_a_new_capture_works_after_resume(
    rtsp_server: RtspServer,
    capture: Callable[..., cv2.VideoCapture],
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    params: int,
) -> None:
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", options)
    reader = Reader(capture(rtsp_server.url, read_timeout_ms=params))
    try:
        wait_for(lambda: len(reader.times) >= 25, 20, "25 frames before pausing")
        rtsp_server.pause()
        failed_at = wait_for(lambda: reader.failed_at, 20, "read() to return False on the stalled stream")
        assert failed_at is not None
        stall = failed_at - reader.times[-1]
        # OpenCV retries a timed-out read once or twice, so the stall is a small multiple of the timeout.
        assert 1.5 <= stall <= 15, f"read() gave up after {stall:.1f} s"
    finally:
        if rtsp_server.paused:
            rtsp_server.resume()
        reader.close()

    cap = capture(rtsp_server.url)
    for _ in range(25):
        ok, frame = cap.read()
        assert ok and frame is not None and frame.shape == (720, 1280, 3)


def test_rtsp_server_restarts_on_the_same_port_and_serves_extra_mounts(
    rtsp_server_factory: Callable[..., RtspServer],
    assets: Assets,
    capture: Callable[..., cv2.VideoCapture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)
    server = rtsp_server_factory(mounts={"second": assets.frames})
    url, pid = server.url, server.pid
    assert server.stop() == 0
    server.start()
    assert (server.url, server.pid != pid) == (url, True)
    for mount_url in server.urls.values():
        ok, frame = capture(mount_url).read()
        assert ok and frame is not None and frame.shape == (720, 1280, 3), mount_url


# --------------------------------------------------------------------------- assets and helpers


def test_assets_are_real_media(assets: Assets) -> None:
    for path in (assets.bus, assets.zidane, assets.clip, assets.enter_leave):
        assert path.is_file() and path.stat().st_size > 10_000, path
    for path, shape in ((assets.bus, (1080, 810, 3)), (assets.zidane, (720, 1280, 3))):
        image = cv2.imread(str(path))
        assert image is not None and image.shape == shape, path
    assert len(list(assets.frames.glob("*.jpg"))) == 300
    clip = cv2.VideoCapture(str(assets.clip))
    try:
        frames = int(clip.get(cv2.CAP_PROP_FRAME_COUNT))
        size = (int(clip.get(cv2.CAP_PROP_FRAME_WIDTH)), int(clip.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        clip.release()
    assert (frames, size, assets.fps) == (300, (1280, 720), 25.0)
    assert [s["person"] for s in assets.enter_leave_segments] == [True, False, True]
    assert assets.enter_leave_segments[-1]["end_frame"] == 250


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"camera": "gate"}, 7.0),
        ({"camera": "yard", "kind": "x"}, 2.0),
        ({"camera": "nowhere"}, None),
    ],
)
def test_parse_metric(labels: dict[str, str], expected: float | None) -> None:
    text = (
        "# HELP edgedet_frames_total Frames read.\n"
        "# TYPE edgedet_frames_total counter\n"
        'edgedet_frames_total{camera="gate"} 7.0\n'
        'edgedet_frames_total{camera="yard",kind="x"} 2.0\n'
        'edgedet_frames_total{camera="yard",kind="y"} 3.0\n'
    )
    assert parse_metric(text, "edgedet_frames_total", labels) == expected


def test_parse_metric_refuses_ambiguous_series() -> None:
    text = 'm_total{camera="a"} 1\nm_total{camera="b"} 2\n'
    with pytest.raises(ValueError, match="2 samples match m_total"):
        parse_metric(text, "m_total")


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match=r"timed out after 0\.1 s waiting for the impossible"):
        wait_for(lambda: False, 0.1, "the impossible")
