"""Issue 10 item 9: one frame's failure (preprocess, decode, a sink output) is contained to that frame,
counted by camera and kind, logged once per state change, and every other frame and camera goes on.
Non-finite boxes and scores never leave postprocessing."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.framequeue import FrameHub
from edgedet.inference import DecodeOptions, FrameErrors, InferenceWorker
from edgedet.metrics import Metrics
from edgedet.postprocess import decode
from edgedet.preprocess import Letterbox
from edgedet.types import Detections, Frame
from tests.unit.test_inference import INFO

GEO = Letterbox(src_h=64, src_w=64, dst_h=64, dst_w=64, new_h=64, new_w=64, top=0, left=0)


def head(*rows: tuple[float, float, float, float, float]) -> np.ndarray:
    """A (1, 6, n) head output: one (cx, cy, w, h, person score) column per row; smoke scores 0."""
    out = np.zeros((1, 6, len(rows)), np.float32)
    for i, (cx, cy, w, h, score) in enumerate(rows):
        out[0, :5, i] = (cx, cy, w, h, score)
    return out


GOOD = (32.0, 32.0, 10.0, 10.0, 0.9)


@pytest.mark.parametrize(
    "bad",
    [(math.nan, 20.0, 10.0, 10.0, 0.95), (20.0, 20.0, math.inf, 10.0, 0.95), (20.0, 20.0, 10.0, -math.inf, 0.95),
     (10.0, 10.0, 6.0, 6.0, math.inf), (10.0, 10.0, 6.0, 6.0, math.nan)],
    ids=["nan-cx", "inf-w", "neg-inf-h", "inf-score", "nan-score"],
)
def test_decode_drops_non_finite_candidates_and_keeps_the_rest(bad: tuple[float, ...]) -> None:
    dets = decode(head(bad, GOOD), GEO, INFO.names, conf=0.25)
    assert [d.label for d in dets] == ["person"]
    assert all(math.isfinite(v) for d in dets for v in (d.score, *d.xyxy))
    assert dets[0].xyxy == pytest.approx((27.0, 27.0, 37.0, 37.0))
    assert decode(head(bad), GEO, INFO.names) == ()


class NanDetector:
    """A detector whose every output holds a NaN box with the best score next to a good box (a broken
    fp16 export does this). Frames of camera ``bad`` get a NaN-only output."""

    info = INFO
    device = "cpu"
    backend = "fake"
    runtime = "numpy"
    input_shape = (1, 3, 64, 64)
    np_dtype = np.float32
    input_layout = "nchw"
    anchors = 2

    def input_buffer(self, batch: int) -> np.ndarray | None:
        return None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([head((math.nan, 20.0, 10.0, 10.0, 0.99), GOOD)] * batch.shape[0])


class FlakySink:
    """Records what it gets; raises for the frames of ``camera`` whose seq is in ``fail_seqs``."""

    def __init__(self, camera: str, fail_seqs: set[int]) -> None:
        self.camera, self.fail_seqs = camera, fail_seqs
        self.got: list[Detections] = []
        self.lock = threading.Lock()

    def __call__(self, dets: Detections, frame: Frame) -> None:
        if dets.camera == self.camera and dets.seq in self.fail_seqs:
            raise ValueError("Out of range float values are not JSON compliant")  # what json.dumps says
        with self.lock:
            self.got.append(dets)

    def seqs(self, camera: str) -> list[int]:
        with self.lock:
            return [d.seq for d in self.got if d.camera == camera]


def frame(camera: str, seq: int, image: np.ndarray | None = None) -> Frame:
    img = np.full((128, 128, 3), 50, np.uint8) if image is None else image
    return Frame(camera, seq, time.monotonic_ns(), time.time(), img)


@pytest.fixture
def rig() -> Iterator[tuple[FrameHub, Metrics, threading.Event]]:
    stop = threading.Event()
    metrics = Metrics(CollectorRegistry())
    hub = FrameHub(stop, metrics)
    yield hub, metrics, stop
    stop.set()
    hub.close()


def errors_of(metrics: Metrics, camera: str, kind: str) -> float:
    value = metrics.registry.get_sample_value("edgedet_frame_errors_total", {"camera": camera, "kind": kind})
    return -1.0 if value is None else value


@pytest.mark.parametrize("batch_size", [1, 4])
def test_failing_frames_are_skipped_counted_and_logged_once_per_state_change(
    rig: tuple[FrameHub, Metrics, threading.Event], caplog: pytest.LogCaptureFixture, batch_size: int
) -> None:
    hub, metrics, stop = rig
    for name in ("gate", "yard"):
        metrics.init_camera(name)
    queues = {name: hub.add_camera(name, maxsize=64, backpressure=True) for name in ("gate", "yard")}
    sink = FlakySink("gate", fail_seqs={2, 3, 4})
    worker = InferenceWorker(0, hub, NanDetector(), stop, sink, metrics, DecodeOptions(), batch_size=batch_size,
                             batch_timeout_s=0.02)
    caplog.set_level(logging.INFO, logger="edgedet.inference")
    worker.start()
    broken = np.zeros((0, 0, 3), np.uint8)  # preprocess raises InputError ("image is empty")
    for seq in range(10):
        assert queues["gate"].put(frame("gate", seq, broken if seq == 7 else None))
        assert queues["yard"].put(frame("yard", seq))
    deadline = time.monotonic() + 10
    while (len(sink.seqs("gate")) < 6 or len(sink.seqs("yard")) < 10) and time.monotonic() < deadline:
        stop.wait(0.01)
    stop.set()
    worker.join(5)

    assert worker.error is None and not worker.is_alive()  # the worker went on
    assert sorted(sink.seqs("gate")) == [0, 1, 5, 6, 8, 9]
    assert sorted(sink.seqs("yard")) == list(range(10))
    assert errors_of(metrics, "gate", "sink") == 3
    assert errors_of(metrics, "gate", "preprocess") == 1
    assert errors_of(metrics, "yard", "sink") == 0 and errors_of(metrics, "yard", "preprocess") == 0
    for dets in sink.got:  # the NaN box never left postprocessing
        assert [d.label for d in dets.items] == ["person"]
        assert all(math.isfinite(v) for d in dets.items for v in (d.score, *d.xyxy))
    lines = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    sink_lines = [line for line in lines if "sink" in line[1]]
    assert sink_lines == [
        (logging.ERROR, "camera gate: sink failed on frame 2; skipping failing frames (counted in "
         "edgedet_frame_errors_total) until it works again", True),
        (logging.INFO, "camera gate: sink works again (3 frame(s) failed)", False),
    ]
    assert [line[:2] for line in lines if "preprocess" in line[1]] == [
        (logging.ERROR, "camera gate: preprocess failed on frame 7; skipping failing frames (counted in "
         "edgedet_frame_errors_total) until it works again"),
        (logging.INFO, "camera gate: preprocess works again (1 frame(s) failed)"),
    ]


def test_frame_errors_guard_lets_base_exceptions_through() -> None:
    errors = FrameErrors(Metrics(CollectorRegistry()))
    with pytest.raises(KeyboardInterrupt), errors.guard(frame("gate", 0), "sink"):
        raise KeyboardInterrupt
