"""Event clips: pre/post capture from the ring, MP4 read back by OpenCV with the expected frame count
and duration, time-lapse for slow cameras, bounded ring, drops counted when the clip thread is behind."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.events.clips import QUEUE_FRAMES, ClipRecorder, ClipSettings, FrameRing, write_mp4
from edgedet.types import Detection
from tests.helpers import wait_for


def image(i: int) -> np.ndarray:
    im = np.zeros((360, 640, 3), np.uint8)
    cv2.circle(im, (20 + 10 * i, 180), 30, (0, 255, 0), -1)
    return im


def read_back(path: Path) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(path))
    frames, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def run_clip(
    tmp_path: Path, period_s: float, n: int, new_at: int, end_at: int, **settings: float
) -> tuple[Path, ClipRecorder]:
    stop = threading.Event()
    written: list[tuple[str, str, Path, int]] = []
    rec = ClipRecorder(tmp_path / "clips", ClipSettings(**settings), stop,  # type: ignore[arg-type]
                       on_written=lambda *a: written.append(a))
    rec.start()
    det = Detection("smoke", 0, 0.9, (10, 10, 100, 100))
    for i in range(n):
        t = 1000.0 + i * period_s
        if i == new_at:
            rec.event_new("cam", "ev1", t)
        if i == end_at:
            rec.event_end("cam", "ev1", t)
        rec.offer("cam", t, image(i), [(det, "cam-1-7")])
    rec.close()
    assert not rec.is_alive()
    assert [w[:2] for w in written] == [("cam", "ev1")]
    return written[0][2], rec


def test_a_clip_spans_pre_capture_to_post_capture(tmp_path: Path) -> None:
    # 10 fps; new at frame 30 (t=3 s), end at frame 50 (t=5 s); pre 1 s, post 1 s -> frames 20..60.
    path, rec = run_clip(tmp_path, 0.1, 80, new_at=30, end_at=50, pre_capture_s=1.0, post_capture_s=1.0)
    frames, fps = read_back(path)
    assert frames == 41, frames
    assert fps == pytest.approx(10.0, rel=0.05)
    assert frames / fps == pytest.approx(4.1, abs=0.2)  # seconds
    assert rec.codec in {"H.264", "MPEG-4 Part 2"}
    assert not list(path.parent.glob(".*tmp*")), "no temporary file left behind"


def test_a_slow_camera_gets_a_time_lapse(tmp_path: Path) -> None:
    # one frame every 20 s (a wildfire station): the clip plays its frames at 5 fps
    path, _ = run_clip(tmp_path, 20.0, 12, new_at=3, end_at=8, pre_capture_s=30.0, post_capture_s=30.0)
    frames, fps = read_back(path)
    assert fps == pytest.approx(5.0, rel=0.05)
    assert frames == 9  # frames 2..10: 30 s before new, 30 s after end


def test_the_ring_is_bounded_in_bytes() -> None:
    ring = FrameRing(max_bytes=1000)
    for i in range(50):
        ring.add(float(i), b"x" * 100)
    assert ring.nbytes <= 1000
    assert [t for t, _ in ring.since(0.0)] == [float(i) for i in range(40, 50)]


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    drops: list[str] = []
    rec = ClipRecorder(tmp_path, ClipSettings(), threading.Event(), on_drop=drops.append)  # not started
    for i in range(QUEUE_FRAMES + 5):
        rec.offer("cam", float(i), image(0), [])
    assert rec.dropped == 5 and drops == ["cam"] * 5


def test_write_mp4_is_atomic_and_reads_back(tmp_path: Path) -> None:
    frames = [(float(i), cv2.imencode(".jpg", image(i))[1].tobytes()) for i in range(12)]
    out = tmp_path / "x.mp4"
    assert write_mp4(out, frames, 6.0) == 12
    assert read_back(out) == (12, pytest.approx(6.0, rel=0.05))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mp4"]


def test_clip_thread_finishes_a_clip_when_frames_stop(tmp_path: Path) -> None:
    stop = threading.Event()
    written: list[Path] = []
    rec = ClipRecorder(tmp_path, ClipSettings(pre_capture_s=0.0, post_capture_s=0.0), stop,
                       on_written=lambda cam, ev, path, n: written.append(path))
    rec.start()
    try:
        rec.event_new("cam", "ev", 0.0)
        for i in range(3):
            rec.offer("cam", float(i), image(i), [])
        rec.event_end("cam", "ev", 2.0)  # wall time long past: no more frames will come
        wait_for(lambda: written, 10, "the clip of a camera that went quiet")
    finally:
        stop.set()
        rec.close()


def test_clips_share_the_snapshot_retention_oldest_first(tmp_path: Path) -> None:
    """A written clip is adopted by the snapshot store: keep/max_mb cover clips and snapshots together."""
    from edgedet.events.snapshots import SnapshotStore

    store = SnapshotStore(tmp_path, keep=3, max_mb=50)
    frames = [(float(i), cv2.imencode(".jpg", image(i))[1].tobytes()) for i in range(6)]
    paths = []
    for n in range(5):
        path = tmp_path / "cam" / f"ev{n}.mp4"
        path.parent.mkdir(exist_ok=True)
        write_mp4(path, frames, 5.0)
        store.adopt(path)
        paths.append(path)
    assert [p.name for p in store.files()] == ["ev2.mp4", "ev3.mp4", "ev4.mp4"]
    assert [p.exists() for p in paths] == [False, False, True, True, True]
    again = SnapshotStore(tmp_path, keep=2, max_mb=50)  # a restart scans clips too, oldest pruned
    assert [p.name for p in again.files()] == ["ev3.mp4", "ev4.mp4"]
