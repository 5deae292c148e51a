"""The watchdog's verdict (``Liveness``) judges a wedged daemon, not unreachable cameras; the hub
never reports "ended" while a reload holds it or while it has no camera at all."""

from __future__ import annotations

import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry

from edgedet.capture.cameras import CameraSet
from edgedet.config import CameraConfig
from edgedet.errors import CaptureError
from edgedet.framequeue import FrameHub
from edgedet.health import CrashLatch, FlowTracker, Liveness
from edgedet.inference import DecodeOptions, WorkerPool
from edgedet.metrics import Metrics
from edgedet.model.base import ModelInfo
from edgedet.types import Frame
from tests.helpers import wait_for

INFO = ModelInfo(name="fake", names=("person",), imgsz=(32, 32), stride=32, task="detect", batch=1, half=False,
                 exported_torch=None)


class BlockingDetector:
    """A detector whose forward blocks until released: a worker wedged on one frame."""

    info = INFO
    device = "cpu"
    backend = "fake"
    runtime = "numpy"
    input_shape = (1, 3, 32, 32)
    np_dtype = np.float32
    input_layout = "nchw"
    anchors = 1

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def input_buffer(self, batch: int) -> np.ndarray | None:
        return None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(30)
        return np.zeros((batch.shape[0], 5, 1), np.float32)


def frame(seq: int) -> Frame:
    return Frame("cam", seq, time.monotonic_ns(), time.time(), np.zeros((32, 32, 3), np.uint8))


def parts(grace_s: float, sources=None):  # type: ignore[no-untyped-def]
    stop = threading.Event()
    metrics = Metrics(CollectorRegistry())
    hub = FrameHub(stop, metrics)
    crashes = CrashLatch(stop)
    pool = WorkerPool(hub, lambda d, f: None, metrics, crashes)
    cams = CameraSet(hub, metrics, None) if sources is None else CameraSet(hub, metrics, None, sources=sources)
    return stop, metrics, hub, pool, cams, crashes, Liveness(cams, pool, crashes, grace_s=grace_s)


def test_a_worker_stuck_on_one_frame_stops_the_pings() -> None:
    stop, _, hub, pool, cams, crashes, liveness = parts(grace_s=0.5)
    queue = hub.add_camera("cam")
    detector = BlockingDetector()
    pool.start(detector, DecodeOptions(), 1)
    try:
        liveness.tick()
        assert liveness() == (True, "0 live camera(s), 0 frame(s) processed")
        queue.put(frame(0))
        assert detector.entered.wait(5)

        def wedged() -> str | None:
            liveness.tick()  # the main loop is fine: only the worker is stuck
            ok, summary = liveness()
            return None if ok else summary

        summary = wait_for(wedged, 5, "the watchdog to see the stuck worker")
        assert summary.startswith("wedged: infer:0 silent for "), summary
        detector.release.set()  # the forward returns: the worker polls again, pings resume
        wait_for(lambda: (liveness.tick(), liveness()[0])[1], 5, "pings to resume")
    finally:
        detector.release.set()
        stop.set()
        hub.close()
        pool.stop(5)


def test_a_silent_main_loop_stops_the_pings_and_a_tick_resumes_them() -> None:
    *_, liveness = parts(grace_s=0.2)
    liveness.tick()
    assert liveness()[0]
    ok, summary = wait_for(lambda: (lambda r: r if not r[0] else None)(liveness()), 5, "the main loop to look silent")
    assert summary.startswith("wedged: main loop silent for "), summary
    liveness.tick()
    assert liveness()[0]


def test_a_crash_stops_the_pings() -> None:
    stop, *_, crashes, liveness = parts(grace_s=10.0)
    liveness.tick()
    crashes(RuntimeError("boom"))
    assert stop.is_set()
    assert liveness() == (False, "a worker crashed: boom")


class DeadSource:
    """A camera that never answers: every open fails at once."""

    fps = None
    is_file = False
    read_timeout_s = None

    def open(self) -> None:
        raise CaptureError("connection refused")

    def grab(self) -> bool:
        return False

    def retrieve(self) -> np.ndarray | None:
        return None

    def close(self) -> None:
        pass


def test_unreachable_cameras_keep_the_pings_going() -> None:
    """The only camera fails for several backoff rounds, each wait longer than the grace: still pinging
    (systemd cannot fix a dead network; camera_up and /healthz report it)."""
    stop, metrics, _, _, cams, _, liveness = parts(grace_s=0.3, sources=lambda cam: DeadSource)
    cams.start("gate", CameraConfig(url="rtsp://127.0.0.1:1/x"))
    verdicts: list[tuple[bool, str]] = []

    def failures() -> float | None:
        liveness.tick()
        verdicts.append(liveness())
        n = metrics.registry.get_sample_value("edgedet_capture_errors_total", {"camera": "gate", "kind": "open"})
        return n if n is not None and n >= 3 else None

    try:
        wait_for(failures, 30, "three failed opens")
    finally:
        stop.set()
        cams.stop(timeout=5)
    assert all(ok for ok, _ in verdicts), [s for ok, s in verdicts if not ok][:3]
    assert verdicts[-1][1] == "1 live camera(s), 0 frame(s) processed"


def test_the_hub_never_ends_while_held_or_empty() -> None:
    stop = threading.Event()
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    assert not hub.ended(), "no camera yet is not 'every camera finished'"
    finished = hub.add_camera("file")
    finished.close()  # end of file
    assert hub.ended()
    with hub.holding():  # a reload restarts the other cameras
        assert not hub.ended()
    assert hub.ended()
    hub.remove_camera("file")
    assert not hub.ended()
    hub.close()
    assert hub.ended()


def test_flow_tracker_ages() -> None:
    flow = FlowTracker()
    assert flow.age_s("cam") != flow.age_s("cam")  # NaN before the first frame
    flow.seen("cam", time.monotonic_ns())
    assert 0 <= flow.age_s("cam") < 5
