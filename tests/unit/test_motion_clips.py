"""Motion gating in the daemon's capture thread on the generated clips (scripts/make_clip.py): the static
scene is inferred >= 5x less often, every appearance is inferred from its first frames on, the floor is
never exceeded, and the slow plume raises the rate before the floor would have. The model's side (events
per appearance, delays) is measured by ``edgedet bench --motion``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgedet.capture.cameras import CameraSet
from edgedet.config import CameraConfig
from edgedet.config.detect import DetectConfig
from edgedet.framequeue import FrameHub
from edgedet.metrics import Metrics

DEADLINE_S = 60.0


def inferred_times(clip: Path, fps: float, detect: DetectConfig) -> tuple[list[float], Metrics, int]:
    """Media times (s) of the frames the capture thread sent to inference, reading ``clip`` with back-pressure."""
    stop = threading.Event()
    metrics = Metrics(CollectorRegistry())
    hub = FrameHub(stop, metrics)
    cams = CameraSet(hub, metrics, None)
    cams.start("hill", CameraConfig(url=str(clip), realtime=False, detect=detect))
    times: list[float] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not hub.ended():  # the queue closes at the end of the file
            assert time.monotonic() < deadline, "the clip did not end within the deadline"
            frame = hub.get(timeout=0.1)
            if frame is not None:
                times.append(frame.seq / fps)  # seq counts every decoded frame: media time
    finally:
        stop.set()
        cams.stop()
    decoded = int(metrics.registry.get_sample_value("edgedet_frames_captured_total", {"camera": "hill"}) or 0)
    return times, metrics, decoded


@pytest.fixture(scope="module")
def clips(assets) -> Path:  # noqa: ANN001 - the session fixture from tests/conftest.py
    folder = Path(assets.dir)
    if not (folder / "static_scene.mp4").is_file():
        pytest.fail("scripts/make_clip.py did not write static_scene.mp4")
    return folder


def test_static_scene_is_inferred_on_appearances_and_at_the_floor(clips: Path) -> None:
    meta = json.loads((clips / "static_scene.json").read_text())
    fps = float(meta["fps"])
    detect = DetectConfig(mode="motion", min_interval_s=0.5, max_interval_s=10.0)
    times, metrics, decoded = inferred_times(clips / "static_scene.mp4", fps, detect)
    assert decoded == round(meta["seconds"] * fps)
    assert decoded / len(times) >= 5.0, f"{len(times)} inferences of {decoded} frames"
    for a in meta["appearances"]:  # inferred from the first frame of each appearance, every <= 0.6 s in it
        inside = [t for t in times if a["start_s"] - 1e-6 <= t < a["end_s"]]
        assert inside and inside[0] - a["start_s"] < 1.0 / fps + 1e-6, (a, inside)
        gaps = [b - t for t, b in zip(inside, inside[1:], strict=False)]
        assert max(gaps) <= 0.5 + 1.0 / fps + 1e-6, (a, inside)
    gaps = [b - t for t, b in zip(times, times[1:], strict=False)]
    # the first frame at or after the floor: at most one frame period late (frames come every 1/fps)
    assert max(gaps) <= detect.max_interval_s + 1.0 / fps + 1e-6, "the floor was not kept"
    skipped = {r: metrics.registry.get_sample_value("edgedet_inference_skipped_total", {"camera": "hill", "reason": r})
               for r in ("no_motion", "min_interval")}
    assert skipped["no_motion"] and skipped["min_interval"]
    assert (skipped["no_motion"] or 0) + (skipped["min_interval"] or 0) == decoded - len(times)


def test_always_mode_sends_every_frame(clips: Path) -> None:
    meta = json.loads((clips / "static_scene.json").read_text())
    times, _, decoded = inferred_times(clips / "static_scene.mp4", float(meta["fps"]), DetectConfig())
    assert len(times) == decoded == round(meta["seconds"] * meta["fps"])


def test_slow_plume_raises_the_rate_before_the_floor(clips: Path) -> None:
    meta = json.loads((clips / "slow_plume.json").read_text())
    fps, start = float(meta["fps"]), float(meta["start_s"])
    detect = DetectConfig(mode="motion", max_interval_s=30.0)  # a long floor: the rate must come from the plume
    times, _, _ = inferred_times(clips / "slow_plume.mp4", fps, detect)
    after = [t for t in times if t >= start]
    assert after and after[0] - start < detect.max_interval_s, after[:3]
    rate_before = len([t for t in times if t < start]) / start
    rate_late = len([t for t in times if t >= start + 20]) / (meta["seconds"] - start - 20)
    assert rate_before <= 1 / start + 1e-6 and rate_late >= 0.9 * fps, (rate_before, rate_late)  # kept raised
