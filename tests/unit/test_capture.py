from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.capture.source import FfmpegOptionsGate, FrameSource, OpenCvSource
from edgedet.capture.worker import FROZEN_MAX_DIFF, CaptureWorker, thumbnail
from edgedet.errors import CaptureError
from edgedet.framequeue import CameraQueue, FrameHub
from edgedet.metrics import Metrics
from edgedet.redact import mask_url
from edgedet.types import Frame

DEADLINE_S = 10.0
CAM = "gate"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def workers(stop: threading.Event) -> Iterator[list[CaptureWorker]]:
    """Workers started by a test; stopped and joined (with a deadline) at teardown."""
    started: list[CaptureWorker] = []
    yield started
    stop.set()
    for worker in started:
        worker.join(DEADLINE_S)
        assert not worker.is_alive(), f"{worker.name} did not stop"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, {"camera": CAM, **labels})
    assert got is not None, f"no sample {name}{labels}"
    return got


def write_video(path: Path, frames: int = 30, fps: float = 30.0) -> Path:
    """MJPG AVI, 64x48; frame i is uniformly grey level i*8, so its index can be read back."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 8, np.uint8))
    writer.release()
    return path


def index_of(frame: Frame) -> int:
    return round(float(frame.image.mean()) / 8)


def collect_until_ended(hub: FrameHub, limit: int = 10_000) -> list[Frame]:
    deadline = time.monotonic() + DEADLINE_S
    got: list[Frame] = []
    while len(got) < limit:
        frame = hub.get(timeout=0.1)
        if frame is not None:
            got.append(frame)
        elif hub.ended():
            break
        assert time.monotonic() < deadline, f"no end of stream after {len(got)} frames"
    return got


def collect(hub: FrameHub, count: int) -> list[Frame]:
    deadline = time.monotonic() + DEADLINE_S
    got: list[Frame] = []
    while len(got) < count:
        frame = hub.get(timeout=0.1)
        if frame is not None:
            got.append(frame)
        assert time.monotonic() < deadline, f"only {len(got)} of {count} frames"
    return got


# ----------------------------------------------------------------------------- fakes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """A FrameSource with a scripted behaviour (implements the protocol; no mocks)."""

    def __init__(
        self,
        *,
        open_error: str | None = None,
        frames: int | None = 0,
        is_file: bool = False,
        fps: float | None = 25.0,
        on_grab: Callable[[int], None] | None = None,
        decodes: bool = True,
        grab_raises: BaseException | None = None,
        image: Callable[[int], np.ndarray] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.open_error = open_error
        self.frames = frames  # good grabs before grab() returns False; None = endless
        self._is_file = is_file
        self._fps = fps
        self.on_grab = on_grab
        self.decodes = decodes
        self.grab_raises = grab_raises
        self.image = image  # frame number -> picture (default: 4x4 grey, level = frame number)
        self.on_end = on_end  # called when grab() fails (e.g. to let a fake clock run)
        self.grabs = 0
        self.opened = False
        self.closed = False
        self.read_timeout_s: float | None = None  # as OpenCvSource has

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def is_file(self) -> bool:
        return self._is_file

    def open(self) -> None:
        if self.open_error is not None:
            raise CaptureError(self.open_error)
        self.opened = True

    def grab(self) -> bool:
        if self.grab_raises is not None:
            raise self.grab_raises
        if self.frames is not None and self.grabs >= self.frames:
            if self.on_end is not None:
                self.on_end()
            return False
        if self.on_grab is not None:
            self.on_grab(self.grabs)
        self.grabs += 1
        return True

    def retrieve(self) -> np.ndarray | None:
        if not self.decodes:
            return None
        if self.image is not None:
            return self.image(self.grabs - 1)
        return np.full((4, 4, 3), self.grabs % 256, np.uint8)

    def close(self) -> None:
        self.closed = True


class Script:
    """source_factory returning the scripted sources in turn, then repeating the last one."""

    def __init__(self, *makers: Callable[[], FakeSource]) -> None:
        self.makers = list(makers)
        self.made: list[FakeSource] = []

    def __call__(self) -> FrameSource:
        maker = self.makers.pop(0) if len(self.makers) > 1 else self.makers[0]
        source = maker()
        self.made.append(source)
        return source


class RecordingWait:
    """The worker's wait function: records each delay without waiting; from call number
    ``block_at`` on it blocks on ``stop`` instead, and sets ``reached``."""

    def __init__(self, stop: threading.Event, block_at: int) -> None:
        self.stop = stop
        self.block_at = block_at
        self.delays: list[float] = []
        self.reached = threading.Event()

    def __call__(self, delay: float) -> bool:
        self.delays.append(delay)
        if len(self.delays) >= self.block_at:
            self.reached.set()
            return self.stop.wait(DEADLINE_S * 3)
        return self.stop.is_set()


class States:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, camera: str, up: bool) -> None:
        with self.lock:
            self.calls.append((camera, up))


def make_worker(
    workers: list[CaptureWorker],
    factory: Callable[[], FrameSource],
    queue: CameraQueue,
    stop: threading.Event,
    metrics: Metrics | None,
    **kwargs: object,
) -> CaptureWorker:
    worker = CaptureWorker(CAM, factory, queue, stop, metrics, **kwargs)  # type: ignore[arg-type]
    workers.append(worker)
    worker.start()
    return worker


# ----------------------------------------------------------------------------- files


def test_file_to_eof_with_backpressure_delivers_every_frame_in_order(
    tmp_path: Path, stop: threading.Event, registry: CollectorRegistry, metrics: Metrics,
    workers: list[CaptureWorker],
) -> None:
    path = write_video(tmp_path / "clip.avi")
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=2, backpressure=True)
    states = States()
    worker = make_worker(
        workers, lambda: OpenCvSource(str(path), "file"), queue, stop, metrics,
        realtime=False, on_state=states,
    )
    frames = collect_until_ended(hub)
    worker.join(DEADLINE_S)
    assert not worker.is_alive()
    assert [f.seq for f in frames] == list(range(30))
    assert [index_of(f) for f in frames] == list(range(30))
    assert all(f.camera == CAM and f.image.shape == (48, 64, 3) for f in frames)
    assert [f.t_mono_ns for f in frames] == sorted(f.t_mono_ns for f in frames)
    assert queue.closed and hub.ended()
    assert states.calls == [(CAM, True)]  # ended, not down
    assert value(registry, "edgedet_frames_captured_total") == 30
    assert value(registry, "edgedet_frames_dropped_total", reason="queue_full") == 0
    assert value(registry, "edgedet_camera_up") == 0
    assert value(registry, "edgedet_camera_reconnects_total") == 0


def test_file_loop_keeps_seq_rising_across_wrap(
    tmp_path: Path, stop: threading.Event, registry: CollectorRegistry, metrics: Metrics,
    workers: list[CaptureWorker],
) -> None:
    path = write_video(tmp_path / "clip.avi")
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=2, backpressure=True)
    make_worker(
        workers, lambda: OpenCvSource(str(path), "file"), queue, stop, metrics, realtime=False, loop=True
    )
    frames = collect(hub, 75)
    assert [f.seq for f in frames] == list(range(75))
    assert [index_of(f) for f in frames] == [i % 30 for i in range(75)]
    assert not queue.closed
    assert value(registry, "edgedet_camera_up") == 1
    assert value(registry, "edgedet_camera_reconnects_total") == 0


def test_loop_with_fps_limit_longer_than_the_file(
    tmp_path: Path, stop: threading.Event, registry: CollectorRegistry, metrics: Metrics,
    workers: list[CaptureWorker],
) -> None:
    # 3 frames (0.1 s) per pass, one frame wanted per 0.5 s of media time: most passes
    # deliver nothing, which must not count as a failure.
    path = write_video(tmp_path / "short.avi", frames=3, fps=30.0)
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=2, backpressure=True)
    make_worker(
        workers, lambda: OpenCvSource(str(path), "file"), queue, stop, metrics,
        realtime=False, loop=True, fps_limit=2,
    )
    frames = collect(hub, 3)
    assert [f.seq for f in frames] == [0, 1, 2]
    assert [index_of(f) for f in frames] == [0, 0, 0]  # every 15th media frame = 5 passes of 3
    assert value(registry, "edgedet_capture_errors_total", kind="read") == 0
    assert value(registry, "edgedet_camera_reconnects_total") == 0


def test_fps_limit_on_realtime_file(
    tmp_path: Path, stop: threading.Event, registry: CollectorRegistry, metrics: Metrics,
    workers: list[CaptureWorker],
) -> None:
    path = write_video(tmp_path / "clip.avi", frames=30, fps=30.0)
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=64)  # big enough: nothing dropped by the queue
    make_worker(
        workers, lambda: OpenCvSource(str(path), "file"), queue, stop, metrics, realtime=True, fps_limit=10
    )
    frames = collect_until_ended(hub)
    assert 8 <= len(frames) <= 12
    span_s = (frames[-1].t_mono_ns - frames[0].t_mono_ns) / 1e9
    rate = (len(frames) - 1) / span_s
    assert 6.0 <= rate <= 15.0, f"{len(frames)} frames over {span_s:.2f} s"
    assert [f.seq for f in frames] == list(range(len(frames)))
    captured = value(registry, "edgedet_frames_captured_total")
    skipped = value(registry, "edgedet_frames_dropped_total", reason="fps_limit")
    assert captured == len(frames) and captured + skipped == 30


def test_realtime_file_is_paced_at_its_fps(
    tmp_path: Path, stop: threading.Event, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    path = write_video(tmp_path / "clip.avi", frames=15, fps=30.0)
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=64)
    make_worker(workers, lambda: OpenCvSource(str(path), "file"), queue, stop, metrics, realtime=True)
    frames = collect_until_ended(hub)
    assert len(frames) == 15
    span_s = (frames[-1].t_mono_ns - frames[0].t_mono_ns) / 1e9
    assert 0.3 <= span_s <= 2.0  # 14 intervals at 30 fps = 0.47 s


def test_missing_file_reconnects_with_backoff_and_stays_down(
    tmp_path: Path, stop: threading.Event, registry: CollectorRegistry, metrics: Metrics,
    workers: list[CaptureWorker], caplog: pytest.LogCaptureFixture,
) -> None:
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM)
    reached = threading.Event()
    calls = []

    def wait(delay: float) -> bool:  # really waits (stop.wait), counts calls
        calls.append(delay)
        if len(calls) >= 4:
            reached.set()
        return stop.wait(delay)

    states = States()
    with caplog.at_level(logging.INFO, logger="edgedet.capture"):
        worker = make_worker(
            workers, lambda: OpenCvSource(str(tmp_path / "missing.avi"), "file"), queue, stop, metrics,
            backoff_initial=0.01, backoff_max=0.02, wait=wait, on_state=states,
        )
        assert reached.wait(DEADLINE_S)
        assert value(registry, "edgedet_camera_reconnects_total") >= 3
        assert value(registry, "edgedet_capture_errors_total", kind="open") >= 4
        assert value(registry, "edgedet_camera_up") == 0
        stop.set()
        worker.join(2.0)
    assert not worker.is_alive()
    assert states.calls == [(CAM, False)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"camera {CAM} down: cannot open {tmp_path / 'missing.avi'}: no such file; "
                        "reconnecting with backoff"]  # logged once, not per retry
    assert not queue.closed  # down, not ended


# ----------------------------------------------------------------------------- fakes: backoff, state


def test_backoff_sequence_resets_after_a_frame_and_state_changes(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=10)
    script = Script(
        lambda: FakeSource(open_error="cannot open fake://cam: refused"),
        lambda: FakeSource(open_error="cannot open fake://cam: refused"),
        lambda: FakeSource(open_error="cannot open fake://cam: refused"),
        lambda: FakeSource(frames=2),  # two frames, then a read failure
        lambda: FakeSource(open_error="cannot open fake://cam: refused"),
    )
    waiter = RecordingWait(stop, block_at=6)
    states = States()
    make_worker(
        workers, script, queue, stop, metrics, backoff_initial=0.01, backoff_max=0.03,
        wait=waiter, rng=random.Random(42), on_state=states, stable_frames=2, stable_s=0.0,
    )
    assert waiter.reached.wait(DEADLINE_S)
    caps = [0.01, 0.02, 0.03, 0.01, 0.02, 0.03]  # doubling, capped, reset by the frames
    expected_rng = random.Random(42)
    assert waiter.delays == pytest.approx([expected_rng.uniform(0.0, cap) for cap in caps])
    assert states.calls == [(CAM, False), (CAM, True), (CAM, False)]
    assert value(registry, "edgedet_camera_reconnects_total") == 5
    assert value(registry, "edgedet_capture_errors_total", kind="open") == 5
    assert value(registry, "edgedet_capture_errors_total", kind="read") == 1
    assert value(registry, "edgedet_camera_up") == 0
    assert [f.seq for f in collect(hub, 2)] == [0, 1]
    assert all(s.closed for s in script.made)


def test_seq_keeps_rising_across_reconnects(
    stop: threading.Event, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=20)
    script = Script(lambda: FakeSource(frames=3))
    waiter = RecordingWait(stop, block_at=3)
    make_worker(workers, script, queue, stop, metrics, backoff_initial=0.01, wait=waiter)
    assert waiter.reached.wait(DEADLINE_S)
    assert [f.seq for f in collect(hub, 9)] == list(range(9))


def test_unexpected_exception_is_logged_counted_and_retried(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM)
    script = Script(lambda: FakeSource(frames=None, grab_raises=ZeroDivisionError("bug")))
    waiter = RecordingWait(stop, block_at=2)
    with caplog.at_level(logging.WARNING, logger="edgedet.capture"):
        worker = make_worker(workers, script, queue, stop, metrics, backoff_initial=0.01, wait=waiter)
        assert waiter.reached.wait(DEADLINE_S)
    assert worker.is_alive()  # still retrying
    assert value(registry, "edgedet_capture_errors_total", kind="internal") == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in errors)
    assert not stop.is_set()  # one camera's bug does not stop the daemon


# ----------------------------------------------------------------------------- stall


def test_grab_that_blocks_past_stall_timeout_reconnects(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    clock = FakeClock()

    def hang_on_third(n: int) -> None:
        clock.now += 11.0 if n == 2 else 0.04

    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=10)
    script = Script(lambda: FakeSource(frames=None, on_grab=hang_on_third))
    waiter = RecordingWait(stop, block_at=1)
    states = States()
    make_worker(
        workers, script, queue, stop, metrics, stall_timeout_s=10.0, clock=clock, wait=waiter,
        on_state=states,
    )
    assert waiter.reached.wait(DEADLINE_S)
    assert value(registry, "edgedet_capture_errors_total", kind="stall") == 1
    assert value(registry, "edgedet_frames_captured_total") == 2
    assert states.calls == [(CAM, True), (CAM, False)]
    assert value(registry, "edgedet_camera_up") == 0


def test_grab_that_really_blocks_triggers_stall(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    slow_network = threading.Event()  # never set: each grab takes 0.3 s of real time

    def slow(n: int) -> None:
        if n >= 1:
            slow_network.wait(0.3)

    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=10)
    waiter = RecordingWait(stop, block_at=1)
    make_worker(
        workers, Script(lambda: FakeSource(frames=None, on_grab=slow)), queue, stop, metrics,
        stall_timeout_s=0.1, wait=waiter,
    )
    assert waiter.reached.wait(DEADLINE_S)
    assert value(registry, "edgedet_capture_errors_total", kind="stall") == 1


def test_frames_that_never_decode_trigger_stall(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    clock = FakeClock()

    def tick(n: int) -> None:
        clock.now += 1.0

    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM)
    waiter = RecordingWait(stop, block_at=1)
    states = States()
    make_worker(
        workers, Script(lambda: FakeSource(frames=None, on_grab=tick, decodes=False)), queue, stop, metrics,
        stall_timeout_s=10.0, clock=clock, wait=waiter, on_state=states,
    )
    assert waiter.reached.wait(DEADLINE_S)
    assert value(registry, "edgedet_capture_errors_total", kind="stall") == 1
    assert value(registry, "edgedet_capture_errors_total", kind="decode") == 12
    assert value(registry, "edgedet_frames_captured_total") == 0
    assert states.calls == [(CAM, False)]


def test_fps_limit_on_live_source_gives_the_right_average_rate(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    clock = FakeClock()
    jitter = random.Random(1)

    def tick(n: int) -> None:  # 25 fps with +-5 ms arrival jitter, 10 s in all
        clock.now = 1000.0 + n * 0.04 + jitter.uniform(-0.005, 0.005)

    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=1000)
    waiter = RecordingWait(stop, block_at=1)
    make_worker(
        workers, Script(lambda: FakeSource(frames=250, on_grab=tick)), queue, stop, metrics,
        fps_limit=5, clock=clock, wait=waiter,
    )
    assert waiter.reached.wait(DEADLINE_S)  # the source ran out: read failure
    captured = value(registry, "edgedet_frames_captured_total")
    assert 49 <= captured <= 51
    assert captured + value(registry, "edgedet_frames_dropped_total", reason="fps_limit") == 250


@pytest.mark.parametrize(
    ("stall_timeout_s", "read_timeout_s", "silent_s", "kind", "reason"),
    [
        (3.0, None, 3.0, "stall", "no frame for 3.0 s (read timed out)"),  # hung peer, read timeout
        (30.0, 10.0, 10.0, "stall", "no frame for 10.0 s (read timed out)"),  # source's timeout first
        (3.0, None, 0.0, "read", "stream ended (read failed after 0.0 s)"),  # connection closed
        (30.0, 10.0, 5.0, "read", "stream ended (read failed after 5.0 s)"),
    ],
)
def test_failed_live_grab_is_a_stall_when_it_timed_out(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture, stall_timeout_s: float, read_timeout_s: float | None,
    silent_s: float, kind: str, reason: str,
) -> None:
    clock = FakeClock()

    def make() -> FakeSource:
        source = FakeSource(frames=2, on_end=lambda: setattr(clock, "now", clock.now + silent_s))
        if read_timeout_s is not None:
            source.read_timeout_s = read_timeout_s
        return source

    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM)
    waiter = RecordingWait(stop, block_at=1)
    with caplog.at_level(logging.WARNING, logger="edgedet.capture"):
        make_worker(
            workers, Script(make), queue, stop, metrics, stall_timeout_s=stall_timeout_s, clock=clock,
            wait=waiter,
        )
        assert waiter.reached.wait(DEADLINE_S)
    other = "read" if kind == "stall" else "stall"
    assert value(registry, "edgedet_capture_errors_total", kind=kind) == 1
    assert value(registry, "edgedet_capture_errors_total", kind=other) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"camera {CAM} down: camera {CAM}: {reason}; reconnecting with backoff"
    ]


def test_a_repeated_bug_logs_its_traceback_once(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM)
    waiter = RecordingWait(stop, block_at=4)
    with caplog.at_level(logging.DEBUG, logger="edgedet.capture"):
        make_worker(
            workers, Script(lambda: FakeSource(frames=None, grab_raises=ZeroDivisionError("bug"))), queue,
            stop, metrics, backoff_initial=0.01, wait=waiter,
        )
        assert waiter.reached.wait(DEADLINE_S)
    assert value(registry, "edgedet_capture_errors_total", kind="internal") == 4
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].levelno == logging.ERROR
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # "down", once


# ----------------------------------------------------------------------------- frozen camera


SCENE = np.random.default_rng(0).integers(0, 256, (72, 128, 3), dtype=np.uint8)


def reencoded(n: int) -> np.ndarray:
    """SCENE with a little per-pixel noise that changes every frame, like a frozen image that
    the camera keeps re-encoding (its thumbnail moves by well under FROZEN_MAX_DIFF)."""
    noise = np.random.default_rng(n).integers(-3, 4, SCENE.shape)
    return np.clip(SCENE.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def ticking(clock: FakeClock, step: float = 0.1) -> Callable[[int], None]:
    def tick(n: int) -> None:
        clock.now += step

    return tick


def frozen_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "frozen" in r.getMessage()]


def test_identical_frames_are_reported_frozen_without_a_reconnect(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=200)
    waiter = RecordingWait(stop, block_at=1)
    states = States()
    with caplog.at_level(logging.INFO, logger="edgedet.capture"):
        make_worker(  # 80 frames 0.1 s apart, then the stream ends
            workers, Script(lambda: FakeSource(frames=80, on_grab=ticking(clock), image=reencoded)), queue,
            stop, metrics, frozen_after_s=5.0, clock=clock, wait=waiter, on_state=states,
        )
        assert waiter.reached.wait(DEADLINE_S)
    assert frozen_logs(caplog) == [(logging.WARNING, f"camera {CAM} frozen: identical frames for 5 s")]
    assert value(registry, "edgedet_camera_frozen") == 1  # the last picture seen was frozen
    assert value(registry, "edgedet_frames_captured_total") == 80  # every frame still delivered
    assert value(registry, "edgedet_capture_errors_total", kind="stall") == 0
    assert value(registry, "edgedet_capture_errors_total", kind="read") == 1  # the end, not the freeze
    assert states.calls == [(CAM, True), (CAM, False)]


def test_a_changed_picture_ends_the_freeze(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()

    def image(n: int) -> np.ndarray:  # frozen for 8 s, then the scene changes (a few cells only)
        if n < 80:
            return reencoded(n)
        moved = reencoded(n)
        moved[:8, :8] = 255 - moved[:8, :8]
        return moved

    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=200)
    waiter = RecordingWait(stop, block_at=1)
    with caplog.at_level(logging.INFO, logger="edgedet.capture"):
        make_worker(
            workers, Script(lambda: FakeSource(frames=100, on_grab=ticking(clock), image=image)), queue,
            stop, metrics, frozen_after_s=5.0, clock=clock, wait=waiter,
        )
        assert waiter.reached.wait(DEADLINE_S)
    assert frozen_logs(caplog) == [
        (logging.WARNING, f"camera {CAM} frozen: identical frames for 5 s"),
        (logging.WARNING, f"camera {CAM} no longer frozen"),
    ]
    assert value(registry, "edgedet_camera_frozen") == 0


@pytest.mark.parametrize(
    ("image", "frozen_after_s"),
    [
        (lambda n: np.full((18, 32, 3), n % 256, np.uint8), 2.0),  # slow drift: 1 level a frame
        (lambda n: np.full((18, 32, 3), 100 + FROZEN_MAX_DIFF + 1 if n % 30 == 29 else 100, np.uint8), 5.0),
        (lambda n: np.full((18, 32, 3), 7, np.uint8), None),  # the check is off
    ],
    ids=["slow-drift", "change-every-3s", "disabled"],
)
def test_pictures_that_change_are_not_frozen(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture, image: Callable[[int], np.ndarray], frozen_after_s: float | None,
) -> None:
    clock = FakeClock()
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=200)
    waiter = RecordingWait(stop, block_at=1)
    with caplog.at_level(logging.INFO, logger="edgedet.capture"):
        make_worker(
            workers, Script(lambda: FakeSource(frames=150, on_grab=ticking(clock), image=image)), queue,
            stop, metrics, frozen_after_s=frozen_after_s, clock=clock, wait=waiter,
        )
        assert waiter.reached.wait(DEADLINE_S)
    assert value(registry, "edgedet_frames_captured_total") == 150
    assert value(registry, "edgedet_camera_frozen") == 0
    assert frozen_logs(caplog) == []


def test_freeze_survives_a_reconnect_with_the_same_picture(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    script = Script(
        lambda: FakeSource(frames=60, on_grab=ticking(clock), image=reencoded),  # frozen after 5 s
        lambda: FakeSource(frames=10, on_grab=ticking(clock), image=reencoded),  # same picture again
    )
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=200)
    waiter = RecordingWait(stop, block_at=2)
    with caplog.at_level(logging.INFO, logger="edgedet.capture"):
        make_worker(workers, script, queue, stop, metrics, frozen_after_s=5.0, clock=clock, wait=waiter)
        assert waiter.reached.wait(DEADLINE_S)
    assert len(script.made) == 2 and script.made[1].grabs == 10
    assert frozen_logs(caplog) == [(logging.WARNING, f"camera {CAM} frozen: identical frames for 5 s")]
    assert value(registry, "edgedet_camera_frozen") == 1


def test_still_run_restarts_after_a_reconnect(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker],
) -> None:
    """Time spent down does not count as 'identical': 3 s still, 10 s down, 3 s still."""
    clock = FakeClock()

    def down_for_10s(delay: float) -> bool:
        clock.now += 10.0
        return waiter(delay)

    script = Script(lambda: FakeSource(frames=30, on_grab=ticking(clock), image=reencoded))
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=200)
    waiter = RecordingWait(stop, block_at=2)
    make_worker(workers, script, queue, stop, metrics, frozen_after_s=5.0, clock=clock, wait=down_for_10s)
    assert waiter.reached.wait(DEADLINE_S)
    assert value(registry, "edgedet_frames_captured_total") == 60
    assert value(registry, "edgedet_camera_frozen") == 0


def test_thumbnail_sees_through_reencoding_noise_but_not_a_change() -> None:
    a, b = thumbnail(reencoded(1)), thumbnail(reencoded(2))
    assert a.shape == (18, 32) and a.dtype == np.uint8
    assert int(cv2.absdiff(a, b).max()) <= FROZEN_MAX_DIFF
    moved = reencoded(2)
    moved[:8, :8] = 255 - moved[:8, :8]
    assert int(cv2.absdiff(a, thumbnail(moved)).max()) > FROZEN_MAX_DIFF
    assert thumbnail(cv2.cvtColor(reencoded(1), cv2.COLOR_BGR2GRAY)).shape == (18, 32)  # grey input


@pytest.mark.parametrize("frozen_after_s", [0.0, -1.0])
def test_frozen_after_s_must_be_positive(stop: threading.Event, frozen_after_s: float) -> None:
    with pytest.raises(ValueError, match=r"frozen_after_s must be > 0 or None \(got "):
        queue = FrameHub(stop, Metrics(CollectorRegistry())).add_camera(CAM)
        CaptureWorker(CAM, Script(FakeSource), queue, stop, Metrics(CollectorRegistry()), frozen_after_s=frozen_after_s)


# ----------------------------------------------------------------------------- OpenCvSource


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/Streaming/101", "rtsp://admin:***@10.0.0.5:554/Streaming/101"),
        ("http://cam/snap.mjpg?user=a&password=x&x=1", "http://cam/snap.mjpg?user=a&password=***&x=1"),
        ("http://tok@cam/x", "http://tok@cam/x"),
        ("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live"),
        ("/videos/a.mp4", "/videos/a.mp4"),
        (0, "0"),
    ],
)
def test_mask_url(url: str | int, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "ftp"}, "source kind must be"),
        ({"transport": "quic"}, "transport must be"),
        ({"fourcc": "MJPEG"}, "fourcc must have 4"),
        ({"read_timeout_s": 0}, "timeouts must be > 0"),
    ],
)
def test_opencv_source_rejects_bad_parameters(kwargs: dict, error: str) -> None:
    args = {"url": "rtsp://h/x", "kind": "rtsp", **kwargs}
    with pytest.raises(ValueError, match=error):
        OpenCvSource(**args)


def test_opencv_source_reads_file(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=5)
    source = OpenCvSource(str(path), "file")
    source.open()
    try:
        assert source.is_file and source.fps == pytest.approx(30.0)
        images = []
        while source.grab():
            image = source.retrieve()
            assert image is not None
            images.append(round(float(image.mean()) / 8))
        assert images == [0, 1, 2, 3, 4]
    finally:
        source.close()


@pytest.mark.parametrize(
    ("content", "reason"), [(None, "no such file"), (b"not a video" * 100, "not a readable video file")]
)
def test_opencv_source_bad_file(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.avi"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaptureError, match=f"^cannot open {path}: {reason}$"):
        OpenCvSource(str(path), "file").open()


class SilentServer:
    """A TCP listener on loopback that accepts connections and never answers; or, with
    ``mjpeg_frames``, answers an HTTP GET with that many MJPEG parts and then goes silent."""

    def __init__(self, mjpeg_frames: int | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.mjpeg_frames = mjpeg_frames
        self.done = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, name="test-silent-server")
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.conns.append(conn)
            if self.mjpeg_frames is not None:
                self._send_mjpeg(conn, self.mjpeg_frames)

    @staticmethod
    def _send_mjpeg(conn: socket.socket, count: int) -> None:
        conn.settimeout(2.0)
        conn.recv(4096)
        ok, jpg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
        assert ok
        data = jpg.tobytes()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n")
        for _ in range(count):
            part = b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
            conn.sendall(part + data + b"\r\n")

    def close(self) -> None:
        self.done.set()
        self.thread.join(DEADLINE_S)
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.parametrize("kind", ["rtsp", "http"])
def test_open_timeout_is_honoured_and_url_masked(silent_server: SilentServer, kind: str) -> None:
    before = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    url = f"{kind}://admin:s3cret@127.0.0.1:{silent_server.port}/stream"
    source = OpenCvSource(url, kind, open_timeout_s=0.5)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(CaptureError) as info:
        source.open()
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert str(info.value) == (
        f"cannot open {kind}://admin:***@127.0.0.1:{silent_server.port}/stream: no answer within 0.5 s"
    )
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") == before  # process env restored


def test_read_timeout_is_honoured() -> None:
    server = SilentServer(mjpeg_frames=10)
    url = f"http://127.0.0.1:{server.port}/x.mjpg"
    source = OpenCvSource(url, "http", open_timeout_s=3, read_timeout_s=0.5)
    try:
        source.open()
        deadline = time.monotonic() + DEADLINE_S
        good = 0
        while True:
            started = time.monotonic()
            if not source.grab():
                break
            good += 1
            assert time.monotonic() < deadline
        assert good >= 1
        assert time.monotonic() - started < 3.0  # the hung read gave up after ~0.5 s
    finally:
        source.close()
        server.close()


class FakeRtspServer:
    """Answers OPTIONS / DESCRIBE (one MJPEG track), records the SETUP Transport header and
    refuses it with 461 -- enough to see which transport FFmpeg asked for. Serves any number of
    connections in turn (the source's OPTIONS probe is one)."""

    SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 26\r\na=control:track1\r\n"

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.transports: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="test-rtsp-server")
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):  # a client that hung up early
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(DEADLINE_S)
            buffer = b""
            while data := conn.recv(4096):
                buffer += data
                while b"\r\n\r\n" in buffer:
                    request, buffer = buffer.split(b"\r\n\r\n", 1)
                    lines = request.decode().split("\r\n")
                    fields = (line.partition(":") for line in lines[1:])
                    headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                    head = f"CSeq: {headers.get('cseq', '1')}\r\n"
                    method = lines[0].split()[0]
                    if method == "DESCRIBE":
                        reply = (f"RTSP/1.0 200 OK\r\n{head}Content-Type: application/sdp\r\n"
                                 f"Content-Length: {len(self.SDP)}\r\n\r\n{self.SDP}")
                    elif method == "SETUP":
                        self.transports.append(headers.get("transport", ""))
                        reply = f"RTSP/1.0 461 Unsupported Transport\r\n{head}\r\n"
                    else:
                        reply = f"RTSP/1.0 200 OK\r\n{head}Public: OPTIONS, DESCRIBE, SETUP, PLAY\r\n\r\n"
                    conn.sendall(reply.encode())

    def close(self) -> None:
        self.done.set()
        self.thread.join(DEADLINE_S)
        self.sock.close()


@pytest.mark.parametrize(("transport", "expected"), [("tcp", "RTP/AVP/TCP;"), ("udp", "RTP/AVP/UDP;")])
def test_rtsp_transport_reaches_ffmpeg(transport: str, expected: str) -> None:
    server = FakeRtspServer()
    try:
        source = OpenCvSource(
            f"rtsp://127.0.0.1:{server.port}/x", "rtsp", transport=transport,  # type: ignore[arg-type]
            open_timeout_s=3,
        )
        with pytest.raises(CaptureError, match="cannot open rtsp://127.0.0.1"):
            source.open()
    finally:
        server.close()
    assert len(server.transports) == 1 and server.transports[0].startswith(expected)


QUIET_SCRIPT = """
import sys
from edgedet.capture.source import OpenCvSource
from edgedet.errors import CaptureError
for _ in range(3):
    try:
        OpenCvSource(sys.argv[1], "file").open()
    except CaptureError as exc:
        print(exc)
"""


@pytest.mark.parametrize(("env", "quiet"), [({}, True), ({"OPENCV_FFMPEG_LOGLEVEL": "16"}, False)])
def test_failed_opens_print_no_native_errors_unless_asked(
    tmp_path: Path, env: dict[str, str], quiet: bool
) -> None:
    """FFmpeg/OpenCV would print 'moov atom not found' and a VIDEOIO warning on every retry."""
    bad = tmp_path / "random.mp4"
    bad.write_bytes(random.Random(3).randbytes(50_000))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCV_FFMPEG", "OPENCV_LOG"))}
    result = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT, str(bad)], env={**clean, **env}, capture_output=True, text=True,
        timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    ours = f"cannot open {bad}: not a readable video file"
    if quiet:
        assert result.stdout.splitlines() == [ours] * 3
        assert result.stderr == ""
    else:  # OpenCV's FFmpeg log callback writes to stdout
        output = result.stdout + result.stderr
        assert output.count(ours) == 3 and output.count("moov atom not found") == 3


# ----------------------------------------------------------------------------- issue 10 item 10: reconnect storms


class NoJitter(random.Random):
    """Full jitter off: every backoff wait is its cap, so the measured intervals show the caps."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_camera_that_gives_one_frame_and_drops_backs_off(
    stop: threading.Event, registry: CollectorRegistry, metrics: Metrics, workers: list[CaptureWorker]
) -> None:
    """Before: the first frame reset the backoff, so such a camera reconnected every ~0.5 s forever."""
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=50)
    opens: list[float] = []

    def factory() -> FrameSource:
        opens.append(time.monotonic())
        return FakeSource(frames=1)  # one frame, then the connection closes

    make_worker(workers, factory, queue, stop, metrics, backoff_initial=0.02, backoff_max=0.32, rng=NoJitter())
    wait_for_true(lambda: len(opens) >= 7)
    intervals = [b - a for a, b in zip(opens[:7], opens[1:7], strict=False)]
    caps = [0.02, 0.04, 0.08, 0.16, 0.32, 0.32]
    for got, cap in zip(intervals, caps, strict=True):
        assert cap <= got < cap + 0.25, (intervals, caps)
    assert value(registry, "edgedet_frames_captured_total") >= 6  # each session still delivered its frame


@pytest.mark.parametrize(("stable_s", "resets"), [(0.0, True), (3600.0, False)])
def test_backoff_resets_only_after_a_stable_session(
    stop: threading.Event, metrics: Metrics, workers: list[CaptureWorker], stable_s: float, resets: bool
) -> None:
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAM, maxsize=100)
    script = Script(
        lambda: FakeSource(frames=1), lambda: FakeSource(frames=1), lambda: FakeSource(frames=1),
        lambda: FakeSource(frames=12),  # >= stable_frames: stable if stable_s has passed too
        lambda: FakeSource(frames=1),
    )
    waiter = RecordingWait(stop, block_at=5)
    make_worker(workers, script, queue, stop, metrics, backoff_initial=1.0, backoff_max=64.0, wait=waiter,
                rng=NoJitter(), stable_frames=10, stable_s=stable_s)
    assert waiter.reached.wait(DEADLINE_S)
    assert waiter.delays == ([1.0, 2.0, 4.0, 1.0, 2.0] if resets else [1.0, 2.0, 4.0, 8.0, 16.0])


def wait_for_true(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_dead_rtsp_camera_does_not_delay_another_cameras_open(silent_server: SilentServer) -> None:
    """A dead camera (it accepts TCP and never answers) used to sit in cv2.VideoCapture() for its whole
    open timeout, and every other RTSP camera's (re)connect waited for it (our lock, and OpenCV's own
    FFmpeg open mutex). Now it fails in the OPTIONS probe, outside both."""
    dead = OpenCvSource(f"rtsp://127.0.0.1:{silent_server.port}/dead", "rtsp", open_timeout_s=2.0)
    dead_done = threading.Event()
    dead_error: list[str] = []

    def open_dead() -> None:
        try:
            dead.open()
        except CaptureError as exc:
            dead_error.append(str(exc))
        dead_done.set()

    thread = threading.Thread(target=open_dead, name="test-dead-open")
    thread.start()
    try:
        wait_for_true(lambda: bool(silent_server.conns))  # the dead camera's open is under way
        for transport, expected in (("tcp", "RTP/AVP/TCP;"), ("udp", "RTP/AVP/UDP;")):
            server = FakeRtspServer()  # answers at once (and refuses SETUP: a fast, finished open)
            try:
                good = OpenCvSource(f"rtsp://127.0.0.1:{server.port}/good", "rtsp",
                                    transport=transport, open_timeout_s=2.0)  # type: ignore[arg-type]
                started = time.monotonic()
                with pytest.raises(CaptureError, match="FFmpeg could not open"):
                    good.open()
                elapsed = time.monotonic() - started
            finally:
                server.close()
            assert not dead_done.is_set()  # it really ran while the dead one was opening
            assert elapsed < 0.5, f"the {transport} camera's open took {elapsed:.2f} s"
            assert server.transports[0].startswith(expected)
    finally:
        thread.join(DEADLINE_S)
    assert dead_error == [f"cannot open rtsp://127.0.0.1:{silent_server.port}/dead: no answer within 2 s"]
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") is None


def test_ffmpeg_options_gate_shares_a_value_and_serialises_another() -> None:
    gate = FfmpegOptionsGate("EDGEDET_TEST_GATE")
    os.environ.pop("EDGEDET_TEST_GATE", None)
    inside = threading.Event()
    release = threading.Event()
    seen: dict[str, str | None] = {}

    def hold(value: str) -> None:
        with gate.using(lambda base: value):
            inside.set()
            seen[f"holder:{value}"] = os.environ.get("EDGEDET_TEST_GATE")
            release.wait(DEADLINE_S)

    holder = threading.Thread(target=hold, args=("tcp",), name="test-gate-holder")
    holder.start()
    try:
        assert inside.wait(DEADLINE_S)
        started = time.monotonic()
        with gate.using(lambda base: "tcp"):  # same value: in at once, next to the holder
            seen["same"] = os.environ.get("EDGEDET_TEST_GATE")
        assert time.monotonic() - started < 0.5
        other_in = threading.Event()

        def other() -> None:
            with gate.using(lambda base: "udp"):
                seen["other"] = os.environ.get("EDGEDET_TEST_GATE")
                other_in.set()

        waiter = threading.Thread(target=other, name="test-gate-other")
        waiter.start()
        assert not other_in.wait(0.2)  # another value waits for the open in flight
        release.set()
        assert other_in.wait(DEADLINE_S)
        waiter.join(DEADLINE_S)
    finally:
        release.set()
        holder.join(DEADLINE_S)
    assert seen == {"holder:tcp": "tcp", "same": "tcp", "other": "udp"}
    assert "EDGEDET_TEST_GATE" not in os.environ  # restored after the last open
