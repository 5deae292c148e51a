"""Inference workers with a fake detector (a real class, not a mock) and a real FrameHub."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.framequeue import FrameHub
from edgedet.inference import DecodeOptions, InferenceWorker, thread_layout
from edgedet.metrics import Metrics
from edgedet.model.base import ModelInfo
from edgedet.types import Detections, Frame

INFO = ModelInfo(
    name="fake", names=("person", "smoke"), imgsz=(64, 64), stride=32, task="detect", batch=1, half=False,
    exported_torch=None,
)


class FakeDetector:
    """Returns one 'person' box centred in the input; can be told to fail."""

    info = INFO
    device = "cpu"
    backend = "fake"
    runtime = "numpy"
    input_shape = (1, 3, 64, 64)
    np_dtype = np.float32
    input_layout = "nchw"
    anchors = 4

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.fail_on_call = fail_on_call

    def input_buffer(self, batch: int) -> np.ndarray | None:
        return None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.batch_sizes.append(batch.shape[0])
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("boom: simulated forward failure")
        assert batch.shape[1:] == (3, 64, 64)
        out = np.zeros((batch.shape[0], 6, 4), np.float32)
        out[:, :4, 0] = (32, 32, 16, 16)
        out[:, 4, 0] = 0.9
        out[:, 4, 1] = batch[:, 0, 0, 0]  # lets a test see which slot held which frame
        out[:, :4, 1] = (8, 8, 4, 4)
        return out


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, time.monotonic_ns(), time.time(), np.zeros((128, 128, 3), np.uint8))


@pytest.mark.parametrize(
    ("cores", "count", "threads", "throughput", "expected"),
    [(2, None, None, False, (1, 2)), (4, None, None, False, (1, 4)), (8, None, None, False, (2, 4)),
     (16, None, None, False, (4, 4)), (1, None, None, False, (1, 1)), (2, 2, None, False, (2, 1)),
     (8, None, 2, False, (4, 2)), (2, 3, 5, False, (3, 5)),
     (2, None, None, True, (2, 1)), (8, None, None, True, (8, 1)), (4, 1, None, True, (1, 4))],
)
def test_thread_layout(cores, count, threads, throughput, expected):
    assert thread_layout(cores, count, threads, throughput) == expected


def test_workers_process_every_frame_and_rescale():
    stop = threading.Event()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    hub = FrameHub(stop, metrics)
    q = hub.add_camera("cam", maxsize=8, backpressure=True)
    results: list[Detections] = []
    lock = threading.Lock()

    def sink(dets: Detections, _frame: Frame) -> None:
        with lock:
            results.append(dets)

    workers = [InferenceWorker(i, hub, FakeDetector(), stop, sink, metrics, DecodeOptions()) for i in range(2)]
    for w in workers:
        w.start()
    for seq in range(6):
        assert q.put(frame("cam", seq))
    q.close()
    for w in workers:
        w.join(5)
    assert not any(w.is_alive() for w in workers)  # hub ended -> workers exit by themselves
    assert sorted(d.seq for d in results) == list(range(6))
    det = results[0].items[0]
    assert det.label == "person" and det.xyxy == pytest.approx((48, 48, 80, 80))  # 64 -> 128 px source
    assert set(results[0].timings) == {"queue_wait", "preprocess", "inference", "postprocess"}
    assert registry.get_sample_value("edgedet_frames_processed_total", {"camera": "cam"}) == 6
    assert registry.get_sample_value("edgedet_detections_total", {"camera": "cam", "label": "person"}) == 6


def test_crashing_worker_sets_stop_and_records_error():
    stop = threading.Event()
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    q = hub.add_camera("cam", maxsize=2)
    worker = InferenceWorker(0, hub, FakeDetector(fail_on_call=1), stop, lambda d, f: None,
                             Metrics(CollectorRegistry()))
    worker.start()
    q.put(frame("cam", 0))
    assert stop.wait(5), "a crashed worker must set the stop event"
    worker.join(5)
    assert not worker.is_alive()
    assert isinstance(worker.error, RuntimeError) and "simulated" in str(worker.error)


def test_micro_batching_gathers_frames_from_several_cameras():
    """batch_size 4: frames waiting in three cameras' queues go through one forward, and each
    result keeps its own camera, seq and image (slot order is preserved)."""
    stop = threading.Event()
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    queues = {name: hub.add_camera(name, maxsize=1) for name in ("a", "b", "c")}
    for i, (name, q) in enumerate(queues.items()):
        image = np.full((128, 128, 3), 100 + 50 * i, np.uint8)  # distinct brightness per camera
        q.put(Frame(name, 10 + i, time.monotonic_ns(), time.time(), image))
        q.close()
    results: list[Detections] = []
    detector = FakeDetector()
    worker = InferenceWorker(0, hub, detector, stop, lambda d, f: results.append(d), Metrics(CollectorRegistry()),
                             batch_size=4,
                             batch_timeout_s=0.5)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert detector.batch_sizes == [3]  # one forward for the three cameras
    assert sorted((d.camera, d.seq) for d in results) == [("a", 10), ("b", 11), ("c", 12)]
    for d in results:
        brightness = {"a": 100, "b": 150, "c": 200}[d.camera]
        small = [x for x in d.items if x.xyxy[2] < 40]
        assert small and small[0].score == pytest.approx(brightness / 255, abs=1e-3)
        assert d.timings["inference"] >= 0 and d.timings["preprocess"] >= 0
