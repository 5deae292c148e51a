"""The motion gate on synthetic frames: a still scene is inferred only at the floor, a moving object at
full rate (down to min_interval_s), a slow plume the running average absorbs still raises the rate
through the long-horizon reference."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from edgedet.motion import MotionGate, MotionSettings, small_grey

rng = np.random.default_rng(0)
HILL = cv2.GaussianBlur(rng.integers(60, 200, (720, 1280, 3), dtype=np.uint8), (31, 31), 0)


def noisy(image: np.ndarray) -> np.ndarray:
    return cv2.add(image, rng.integers(0, 4, image.shape, dtype=np.uint8))  # sensor noise, 0-3 levels


def reasons(frames: list[np.ndarray], settings: MotionSettings, fps: float = 5.0) -> list[str]:
    gate = MotionGate(settings)
    return [gate.decide(f, i / fps).reason for i, f in enumerate(frames)]


def test_a_still_scene_is_inferred_at_the_floor_only() -> None:
    out = reasons([noisy(HILL) for _ in range(100)], MotionSettings(max_interval_s=5.0))  # 20 s at 5 fps
    counts = Counter(out)
    assert counts["first"] == 1 and counts["floor"] == 3 and counts["no_motion"] == 96, counts


def test_a_walking_person_is_inferred_while_moving() -> None:
    frames = []
    for i in range(50):
        im = noisy(HILL)
        if 10 <= i < 30:  # 4 s in view, walking 20 px per frame
            cv2.rectangle(im, (100 + 20 * i, 300), (160 + 20 * i, 480), (30, 30, 30), -1)
        frames.append(im)
    out = reasons(frames, MotionSettings(max_interval_s=10.0))
    assert all(r == "motion" for r in out[11:30]), out[10:31]
    assert out[35:] == ["no_motion"] * 15 or set(out[35:]) <= {"no_motion", "floor"}


def test_min_interval_limits_the_rate_during_motion() -> None:
    frames = [noisy(HILL) if i % 2 else cv2.add(HILL, 80) for i in range(20)]  # everything changes
    out = reasons(frames, MotionSettings(min_interval_s=1.0, max_interval_s=10.0, slow=False))
    counts = Counter(out)
    assert counts["motion"] == 3, out  # 4 s at 5 fps: one per second after the first
    assert counts["min_interval"] >= 5 and set(counts) <= {"first", "motion", "min_interval", "no_motion"}, out


def test_a_slow_plume_raises_the_rate_before_the_floor() -> None:
    """A soft grey blob growing over 60 s: too slow for the running average, seen against the reference."""
    settings = MotionSettings(max_interval_s=30.0, reference_s=300.0)
    gate = MotionGate(settings)
    fps = 2.0
    first_slow = None
    for i in range(int(60 * fps)):
        im = noisy(HILL)
        radius = 5 + i * 1.2  # px, growing slowly
        overlay = im.copy()
        cv2.circle(overlay, (640, 500), int(radius), (210, 210, 210), -1)
        im = cv2.addWeighted(overlay, 0.5, im, 0.5, 0)
        d = gate.decide(im, i / fps)
        if d.reason == "slow_change" and first_slow is None:
            first_slow = i / fps
        assert d.reason != "motion" or i < 4, f"frame-to-frame motion at {i / fps:.1f} s: {d}"
    assert first_slow is not None and first_slow < settings.max_interval_s, first_slow


def test_small_grey_is_small_and_grey() -> None:
    assert small_grey(HILL).shape == (90, 160)
    assert small_grey(HILL[:, :, 0]).shape == (90, 160)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        MotionSettings(min_interval_s=20.0, max_interval_s=10.0)
