"""Profiles applied by the daemon's own classes (ProfileRunner, CameraSet with running capture threads,
EventStage, ResultSink) with a fake clock across a sunset and a midnight: the motion and fps settings
change in place, events continue or end by the documented rule, and the active profile is a metric and
a retained topic."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.capture.cameras import CameraSet
from edgedet.config import CameraConfig, parse_config
from edgedet.events.stage import EventStage
from edgedet.framequeue import FrameHub
from edgedet.health import FlowTracker
from edgedet.homeassistant import HomeAssistant
from edgedet.metrics import Metrics
from edgedet.outputs.topics import Topics
from edgedet.profile_runner import ProfileRunner
from edgedet.results import ResultSink
from edgedet.types import Detection, Detections, Frame

UTC = dt.timezone.utc
CONFIG = """
node_id: n1
location: {latitude: 45.9, longitude: 6.1, timezone: Europe/Paris}
model: {path: m.torchscript}
events:
  default: {confirm_frames: 1, window_frames: 1, min_score: 0.3, clear_after_s: 600}
  tracking: {enabled: false}
  snapshots: {enabled: false}
cameras:
  hill:
    url: rtsp://cam.local/hill
    fps_limit: 5
    labels: [smoke, person]
    detect: {mode: motion, max_interval_s: 10}
    profiles:
      late:
        when: {schedule: {from: "23:30", to: "00:30"}}
        fps_limit: 1
        detect: {mode: always}
      night:
        when: {sun: {below: -6}}
        labels: [person]
        detect: {max_interval_s: 4}
        events: {person: {min_score: 0.6}}
"""


class Publisher:
    """What the stages publish (events, retained state), kept like a broker would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, object]] = []
        self.retained: dict[str, bytes | str] = {}
        self.history: dict[str, list[bytes | str]] = {}

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool:
        with self.lock:
            if kind == "events":
                self.events.append(json.loads(payload))
        return True

    def publish_detections(self, dets: Detections) -> bool:
        return True

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        with self.lock:
            if payload is None:
                self.retained.pop(topic, None)
            else:
                self.retained[topic] = payload
                self.history.setdefault(topic, []).append(payload)


class StillSource:
    """An endless live source of one still image, paced at 20 fps (implements FrameSource)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.image = np.full((72, 128, 3), (40, 120, 200), np.uint8)
        self.read_timeout_s: float | None = None

    fps = None
    is_file = False

    def open(self) -> None:
        pass

    def grab(self) -> bool:
        return not self.stop.wait(0.05)

    def retrieve(self) -> np.ndarray | None:
        return self.image

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 6, 21, 16, 0, tzinfo=UTC)  # 18:00 in Paris

    def set(self, hour: int, minute: int = 0, day: int = 21) -> None:
        self.now = dt.datetime(2026, 6, day, hour, minute, tzinfo=UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising on a sleep


def dets(seq: int, *labels: str) -> Detections:
    items = tuple(Detection(label, i, 0.9, (10.0, 10.0, 50.0, 60.0)) for i, label in enumerate(labels))
    return Detections("hill", seq, time.monotonic_ns(), time.time(), 128, 72, "m", items)


def test_profiles_across_a_sunset_and_a_midnight(tmp_path: Path, stop: threading.Event) -> None:
    cfg = parse_config(CONFIG, "c.yaml", tmp_path, check_files=False)
    metrics = Metrics(CollectorRegistry())
    hub = FrameHub(stop, metrics)
    pub = Publisher()
    topics = Topics("edgedet", "n1")
    cams = CameraSet(hub, metrics, None, sources=lambda cam: lambda: StillSource(stop))
    events = EventStage.from_config(cfg.events, cfg.cameras, tmp_path, pub, topics, metrics)
    assert events is not None
    sink = ResultSink(pub, metrics, FlowTracker(), HomeAssistant(pub, topics), events)  # type: ignore[arg-type]
    clock = Clock()
    runner = ProfileRunner(cams, events, sink, pub, topics, metrics, clock=clock)
    cams.start("hill", cfg.cameras["hill"])
    try:
        heartbeat = cams.heartbeats()["hill"]  # the same capture thread throughout

        def effective() -> CameraConfig:
            return cams.snapshot()["hill"][1]

        def active(profile: str) -> float | None:
            return metrics.registry.get_sample_value("edgedet_profile_active", {"camera": "hill", "profile": profile})

        runner.configure(cfg.cameras, cfg.events, cfg.location)
        assert runner.active() == {"hill": "base"} and active("base") == 1 and active("night") == 0
        assert effective().detect.mode == "motion" and effective().detect.max_interval_s == 10
        # a still scene in motion mode: frames are skipped (the floor is 10 s away)
        wait_for(lambda: (metrics.registry.get_sample_value(
            "edgedet_inference_skipped_total", {"camera": "hill", "reason": "no_motion"}) or 0) >= 3, "skipped frames")

        events.on_frame(dets(1, "smoke", "person"), None)
        assert sorted((e["type"], e["label"]) for e in pub.events) == [("new", "person"), ("new", "smoke")]
        person_id = next(e["id"] for e in pub.events if e["label"] == "person")

        for hour, minute in [(18, 0), (19, 30)]:  # sunset ~19:25 UTC, civil dusk (-6 deg) ~20:05 UTC
            clock.set(hour, minute)
            runner.tick()
            assert runner.active() == {"hill": "base"}
        clock.set(20, 30)
        runner.tick()
        assert runner.active() == {"hill": "night"} and active("night") == 1 and active("base") == 0
        assert pub.retained["edgedet/n1/hill/profile"] == "night"
        assert effective().detect.max_interval_s == 4 and effective().fps_limit == 5
        assert effective().labels == ["person"]
        # the rule for events in progress: smoke is no longer reported -> ended now; person continues
        assert [(e["type"], e["label"]) for e in pub.events[2:]] == [("end", "smoke")]
        sink(dets(2, "smoke", "person"), frame_of(2))
        assert all(e["label"] == "person" and e["id"] == person_id for e in pub.events[3:]), pub.events[3:]
        assert not any(e["type"] == "new" for e in pub.events[3:])

        clock.set(21, 40)  # 23:40 in Paris: the schedule wins (listed first)
        runner.tick()
        assert runner.active() == {"hill": "late"} and effective().detect.mode == "always"
        assert effective().fps_limit == 1
        clock.set(22, 45)  # 00:45 in Paris, the next day: past midnight, the schedule is over
        runner.tick()
        assert runner.active() == {"hill": "night"}
        clock.set(4, 0, day=22)  # sunrise ~03:30 UTC
        runner.tick()
        assert runner.active() == {"hill": "base"} and effective().labels == ["smoke", "person"]
        assert pub.history["edgedet/n1/hill/profile"] == ["base", "night", "late", "night", "base"]
        assert cams.heartbeats()["hill"] is heartbeat  # never restarted
        assert metrics.registry.get_sample_value("edgedet_camera_reconnects_total", {"camera": "hill"}) == 0
    finally:
        cams.stop()


def frame_of(seq: int) -> Frame:
    return Frame("hill", seq, time.monotonic_ns(), time.time(), np.zeros((72, 128, 3), np.uint8))


def test_a_motion_camera_is_held_at_a_shorter_interval_while_an_event_is_in_progress(
        tmp_path: Path, stop: threading.Event) -> None:
    cfg = parse_config(CONFIG, "c.yaml", tmp_path, check_files=False)
    metrics = Metrics(CollectorRegistry())
    pub = Publisher()
    topics = Topics("edgedet", "n1")
    cams = CameraSet(FrameHub(stop, metrics), metrics, None, sources=lambda cam: lambda: StillSource(stop))
    events = EventStage.from_config(cfg.events, cfg.cameras, tmp_path, pub, topics, metrics)
    assert events is not None
    sink = ResultSink(pub, metrics, FlowTracker(), HomeAssistant(pub, topics), events)  # type: ignore[arg-type]
    runner = ProfileRunner(cams, events, sink, pub, topics, metrics, clock=Clock())
    cams.start("hill", cfg.cameras["hill"])
    try:
        runner.configure(cfg.cameras, cfg.events, cfg.location)

        def held() -> float:
            return metrics.registry.get_sample_value("edgedet_inference_skipped_total",
                                                     {"camera": "hill", "reason": "no_motion"}) or 0.0

        events.on_frame(dets(1, "person"), None)
        runner.tick()  # an event in progress: floor = min(clear_after_s 600, tracking.max_age_s 3) / 2 = 1.5 s
        start = metrics.registry.get_sample_value("edgedet_frames_captured_total", {"camera": "hill"}) or 0.0
        wait_for(lambda: (metrics.registry.get_sample_value("edgedet_inference_interval_seconds", {"camera": "hill"})
                          or 99) < 2.0 and held() > 0, "an inference at the held interval")
        assert (metrics.registry.get_sample_value("edgedet_frames_captured_total", {"camera": "hill"}) or 0) > start
    finally:
        cams.stop()
