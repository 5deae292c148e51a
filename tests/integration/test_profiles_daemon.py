"""Profiles and motion gating in a daemon run: real frames (bus.jpg) turned grey, as a colour camera in IR
night mode sends them, switch the camera to its ``ir`` profile without a restart; the active profile is
a retained MQTT topic and a metric, and the still colour frames before it were gated by motion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import metrics_text, parse_metric, wait_for

pytestmark = pytest.mark.integration
NODE = "testnode"
FPS = 5.0


def write_day_then_ir(path: Path, bus: Path, colour_s: float = 4.0, grey_s: float = 16.0) -> None:
    """A still colour scene, then the same scene grey (IR): an MJPEG AVI any OpenCV reads."""
    colour = cv2.resize(cv2.imread(str(bus)), (320, 432))
    grey = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (320, 432))
    rng = np.random.default_rng(1)
    for i in range(round((colour_s + grey_s) * FPS)):
        image = colour if i < colour_s * FPS else grey
        out.write(cv2.add(image, rng.integers(0, 3, image.shape, dtype=np.uint8)))  # sensor noise
    out.release()


def test_grey_frames_switch_to_the_ir_profile_in_place(tmp_path: Path, assets, start_daemon) -> None:
    clip = tmp_path / "day_then_ir.avi"
    write_day_then_ir(clip, assets.bus)
    proc, sub, port = start_daemon(
        {"yard": {"url": str(clip), "realtime": True, "loop": False,
                  "detect": {"mode": "motion", "max_interval_s": 2},
                  "profiles": {"ir": {"when": {"image": "ir", "hold_frames": 3}, "detect": {"mode": "always"},
                                      "labels": ["Fall"]}}}},
    )
    topic = f"edgedet/{NODE}/yard/profile"
    sub.wait_for(lambda m: any(x.topic == topic and x.payload == b"ir" for x in m), timeout=60, what="profile ir")
    text = metrics_text(port)
    assert parse_metric(text, "edgedet_profile_active", {"camera": "yard", "profile": "ir"}) == 1
    assert parse_metric(text, "edgedet_profile_active", {"camera": "yard", "profile": "base"}) == 0
    # the still colour phase was gated by motion: frames skipped, inferred at the 2 s floor
    assert (parse_metric(text, "edgedet_inference_skipped_total", {"camera": "yard", "reason": "no_motion"}) or 0) >= 5
    assert parse_metric(text, "edgedet_camera_reconnects_total", {"camera": "yard"}) == 0  # switched in place
    skipped = parse_metric(text, "edgedet_inference_skipped_total", {"camera": "yard", "reason": "no_motion"})
    captured = parse_metric(text, "edgedet_frames_captured_total", {"camera": "yard"}) or 0

    def later() -> str | None:  # in the ir profile (mode always) nothing more is skipped
        now = metrics_text(port)
        more = (parse_metric(now, "edgedet_frames_captured_total", {"camera": "yard"}) or 0) >= captured + 10
        return now if more else None

    text = wait_for(later, timeout=30, what="10 more frames")
    assert parse_metric(text, "edgedet_inference_skipped_total", {"camera": "yard", "reason": "no_motion"}) == skipped
    assert proc.wait(timeout=60) == 0, proc.output()
    assert [m.payload for m in sub.messages(topic)] == [b"base", b"ir"]
    assert "camera yard: profile base -> ir" in proc.output()
