#!/usr/bin/env python3
"""Generate the demo media used by the integration tests and the README demo.

From the two real photos that ship with the ultralytics package (found without importing it):

- ``DIR/demo.mp4``         slow pan/zoom across bus.jpg, then zidane.jpg (persons in every frame)
- ``DIR/frames/%05d.jpg``  the same frames as JPEGs (input of edgedet/bench/rtsp_server.py)
- ``DIR/bus.jpg``, ``DIR/zidane.jpg``  copies of the photos
- ``DIR/enter_leave.mp4``  one person visible ~3 s, absent ~4 s, visible again ~3 s
- ``DIR/enter_leave.json`` the frame ranges of those three segments
- ``DIR/static_scene.mp4`` a still hillside (60 s, 5 fps, 640x360) where one person (from
  zidane.jpg) appears three times for 4 s; ``DIR/static_scene.json`` the time ranges
- ``DIR/slow_plume.mp4``   the same still hillside with a soft grey plume growing over 60 s
  (2 fps); ``DIR/slow_plume.json`` when it starts and its radius per second

Idempotent: an output that already exists is kept unless ``--force``. Outputs are written under
a temporary name and renamed, so an interrupted run never leaves a half-written file behind.
Uses only OpenCV and NumPy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PHOTOS = ("bus.jpg", "zidane.jpg")
PAD_GREY = (114, 114, 114)
JPEG_QUALITY = 90

# Segments of enter_leave.mp4 in seconds: (duration, person visible).
ENTER_LEAVE = ((3.0, True), (4.0, False), (3.0, True))


def find_assets() -> Path:
    """Return ultralytics' ``assets`` folder without importing ultralytics."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'ultralytics' is not installed; pass --assets DIR")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "assets"
        if all((candidate / name).is_file() for name in PHOTOS):
            return candidate
    raise FileNotFoundError(
        f"no {' and '.join(PHOTOS)} under {list(spec.submodule_search_locations)}/assets; pass --assets DIR"
    )


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x720 (got {text!r})") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"expected positive even WIDTHxHEIGHT (got {text!r})")
    return width, height


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def smooth(t: float) -> float:
    """Ease-in/ease-out of t in [0, 1]."""
    return t * t * (3.0 - 2.0 * t)


def view(image: np.ndarray, size: tuple[int, int], scale: float, centre: tuple[float, float]) -> np.ndarray:
    """Render ``image`` scaled by ``scale`` with source point ``centre`` at the output's centre."""
    width, height = size
    cx, cy = centre
    matrix = np.array(
        [[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]], dtype=np.float64
    )
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=PAD_GREY)


def fit_scale(image: np.ndarray, size: tuple[int, int]) -> float:
    """Scale at which the whole image fits in ``size``."""
    return min(size[0] / image.shape[1], size[1] / image.shape[0])


def ken_burns(
    image: np.ndarray,
    size: tuple[int, int],
    n: int,
    start: tuple[float, float, float],
    end: tuple[float, float, float],
) -> Iterator[np.ndarray]:
    """``n`` frames moving from ``start`` to ``end``; each is (zoom relative to fit, cx, cy) in source px."""
    base = fit_scale(image, size)
    for i in range(n):
        t = smooth(i / max(n - 1, 1))
        zoom, cx, cy = (a + (b - a) * t for a, b in zip(start, end, strict=True))
        yield view(image, size, base * zoom, (cx, cy))


def demo_frames(bus: np.ndarray, zidane: np.ndarray, size: tuple[int, int], n: int) -> Iterator[np.ndarray]:
    """Pan/zoom across bus.jpg then zidane.jpg; the people stay in view throughout."""
    first = n // 2
    bus_h, bus_w = bus.shape[:2]
    zid_h, zid_w = zidane.shape[:2]
    # bus.jpg: from the whole (pillarboxed) photo towards the two people on the left.
    yield from ken_burns(bus, size, first, (1.0, bus_w / 2, bus_h / 2), (1.45, bus_w * 0.31, bus_h * 0.58))
    # zidane.jpg: from the whole photo to a closer view that keeps both people in frame.
    yield from ken_burns(
        zidane, size, n - first, (1.0, zid_w / 2, zid_h / 2), (1.25, zid_w * 0.52, zid_h * 0.55)
    )


def empty_frames(size: tuple[int, int], n: int, phase0: int) -> Iterator[np.ndarray]:
    """Plain grey frames with a faint drifting gradient: no people, yet never a frozen image."""
    width, height = size
    x = np.arange(width, dtype=np.float32)
    for i in range(n):
        row = 114.0 + 10.0 * np.sin((x + 6.0 * (phase0 + i)) * (2 * np.pi / width))
        frame = np.repeat(row[None, :, None], height, axis=0).repeat(3, axis=2)
        yield frame.astype(np.uint8)


def enter_leave_segments(fps: float) -> list[dict[str, Any]]:
    segments = []
    start = 0
    for seconds, person in ENTER_LEAVE:
        count = round(seconds * fps)
        segments.append(
            {
                "start_frame": start,
                "end_frame": start + count,
                "person": person,
                "start_s": start / fps,
                "end_s": (start + count) / fps,
            }
        )
        start += count
    return segments


def enter_leave_frames(
    zidane: np.ndarray, size: tuple[int, int], segments: list[dict[str, Any]]
) -> Iterator[np.ndarray]:
    """One person (the right-hand person of zidane.jpg, slight drift), then an empty grey scene,
    then the same person again: one object per appearance for the tracker."""
    zidane = np.ascontiguousarray(zidane[:, zidane.shape[1] * 9 // 16:])  # the right person only
    zid_h, zid_w = zidane.shape[:2]
    wide, close = (1.0, zid_w / 2, zid_h / 2), (1.1, zid_w * 0.52, zid_h * 0.52)
    for index, segment in enumerate(segments):
        count = segment["end_frame"] - segment["start_frame"]
        if segment["person"]:
            a, b = (wide, close) if index == 0 else (close, wide)
            yield from ken_burns(zidane, size, count, a, b)
        else:
            yield from empty_frames(size, count, segment["start_frame"])


def write_video(
    path: Path,
    frames: Iterator[np.ndarray],
    fps: float,
    size: tuple[int, int],
    also: Callable[[int, np.ndarray], None] | None = None,
) -> int:
    """Write ``frames`` as mp4v to ``path`` atomically; ``also(i, frame)`` sees every frame."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot open {tmp} (mp4v, {size[0]}x{size[1]} @ {fps} fps)")
    count = 0
    try:
        for frame in frames:
            writer.write(frame)
            if also is not None:
                also(count, frame)
            count += 1
    finally:
        writer.release()
    if count == 0 or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"no frames written to {path}")
    os.replace(tmp, path)
    return count


def frames_complete(frames_dir: Path, n: int) -> bool:
    return (frames_dir / f"{n - 1:05d}.jpg").is_file() and not (frames_dir / f"{n:05d}.jpg").exists()


def make_demo(
    out: Path,
    bus: np.ndarray,
    zidane: np.ndarray,
    size: tuple[int, int],
    fps: float,
    seconds: float,
    force: bool,
) -> list[Path]:
    n = round(seconds * fps)
    clip = out / "demo.mp4"
    frames_dir = out / "frames"
    need_clip = force or not clip.is_file()
    need_frames = force or not frames_complete(frames_dir, n)
    if not (need_clip or need_frames):
        return []
    tmp_frames = out / f".frames.{os.getpid()}.tmp"
    shutil.rmtree(tmp_frames, ignore_errors=True)
    tmp_frames.mkdir()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]

    def save_jpeg(i: int, frame: np.ndarray) -> None:
        if not cv2.imwrite(str(tmp_frames / f"{i:05d}.jpg"), frame, params):
            raise RuntimeError(f"cannot write {tmp_frames / f'{i:05d}.jpg'}")

    written: list[Path] = []
    try:
        frames = demo_frames(bus, zidane, size, n)
        if need_clip:
            write_video(clip, frames, fps, size, also=save_jpeg if need_frames else None)
            written.append(clip)
        else:
            for i, frame in enumerate(frames):
                save_jpeg(i, frame)
        if need_frames:
            shutil.rmtree(frames_dir, ignore_errors=True)
            os.replace(tmp_frames, frames_dir)
            written.append(frames_dir)
    finally:
        shutil.rmtree(tmp_frames, ignore_errors=True)
    return written


def make_enter_leave(
    out: Path, zidane: np.ndarray, size: tuple[int, int], fps: float, force: bool
) -> list[Path]:
    clip = out / "enter_leave.mp4"
    meta = out / "enter_leave.json"
    if not force and clip.is_file() and meta.is_file():
        return []
    segments = enter_leave_segments(fps)
    write_video(clip, enter_leave_frames(zidane, size, segments), fps, size)
    tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"fps": fps, "width": size[0], "height": size[1], "segments": segments}, indent=2) + "\n"
    )
    os.replace(tmp, meta)
    return [clip, meta]


STILL_SIZE = (640, 360)
STATIC_FPS = 5.0
STATIC_SECONDS = 60.0
APPEARANCES = ((8.0, 12.0), (26.0, 30.0), (46.0, 50.0))  # seconds with the people in view
PLUME_FPS = 2.0
PLUME_START_S = 5.0


def hillside(size: tuple[int, int], seed: int = 7) -> np.ndarray:
    """A still, textured landscape: sky gradient, a ridge line, noise-textured slopes."""
    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    sky = np.stack([200 - 40 * y, 170 - 30 * y, 120 - 20 * y], axis=2) * np.ones((1, width, 1), np.float32)
    x = np.arange(width, dtype=np.float32)
    ridge = (0.45 + 0.08 * np.sin(x / 70.0) + 0.04 * np.sin(x / 23.0)) * height
    slope = y * height > ridge[None, :]
    texture = cv2.GaussianBlur(rng.uniform(-25, 25, (height, width)).astype(np.float32), (0, 0), 3)
    ground = np.stack([60 + texture, 95 + texture, 70 + texture], axis=2)
    image = np.where(slope[:, :, None], ground, sky)
    return np.clip(image, 0, 255).astype(np.uint8)


def static_scene_frames(zidane: np.ndarray, still: np.ndarray) -> Iterator[np.ndarray]:
    """The still hillside; during each appearance one person (the right-hand person of zidane.jpg)
    stands in the lower half: one object per appearance."""
    h, w = still.shape[:2]
    person = zidane[:, zidane.shape[1] * 9 // 16:]
    people = cv2.resize(person, (w // 3, round(person.shape[0] * (w / 3) / person.shape[1])))
    people = people[: h * 3 // 4]  # at most three quarters of the frame high
    ph, pw = people.shape[:2]
    for i in range(round(STATIC_SECONDS * STATIC_FPS)):
        t = i / STATIC_FPS
        frame = still.copy()
        if any(a <= t < b for a, b in APPEARANCES):
            x0 = w // 4 + int(4 * np.sin(t))  # a slight sway: a person is never frozen
            frame[h - ph:, x0:x0 + pw] = people
        yield frame


def plume_radius(t: float) -> float:
    return 0.0 if t < PLUME_START_S else 6.0 + 1.6 * (t - PLUME_START_S)  # px at 640x360


def slow_plume_frames(still: np.ndarray) -> Iterator[np.ndarray]:
    """A soft grey blob, rising from a point on the slope, growing for 60 s on the still hillside."""
    h, w = still.shape[:2]
    for i in range(round(STATIC_SECONDS * PLUME_FPS)):
        r = plume_radius(i / PLUME_FPS)
        frame = still.copy()
        if r > 0:
            mask = np.zeros((h, w), np.float32)
            cv2.ellipse(mask, (int(w * 0.6), int(h * 0.6 - r * 0.6)), (int(r), int(r * 1.3)), 0, 0, 360, 1.0, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, r / 3))[:, :, None] * 0.55
            frame = (frame * (1 - mask) + np.array([205, 205, 205], np.float32) * mask).astype(np.uint8)
        yield frame


def write_meta(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def make_still_clips(out: Path, zidane: np.ndarray, force: bool) -> list[Path]:
    written: list[Path] = []
    still = hillside(STILL_SIZE)
    scene, scene_meta = out / "static_scene.mp4", out / "static_scene.json"
    if force or not (scene.is_file() and scene_meta.is_file()):
        write_video(scene, static_scene_frames(zidane, still), STATIC_FPS, STILL_SIZE)
        write_meta(scene_meta, {"fps": STATIC_FPS, "seconds": STATIC_SECONDS,
                                "appearances": [{"start_s": a, "end_s": b} for a, b in APPEARANCES]})
        written += [scene, scene_meta]
    plume, plume_meta = out / "slow_plume.mp4", out / "slow_plume.json"
    if force or not (plume.is_file() and plume_meta.is_file()):
        write_video(plume, slow_plume_frames(still), PLUME_FPS, STILL_SIZE)
        write_meta(plume_meta, {"fps": PLUME_FPS, "seconds": STATIC_SECONDS, "start_s": PLUME_START_S,
                                "radius_px": [plume_radius(s) for s in range(int(STATIC_SECONDS))]})
        written += [plume, plume_meta]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of demo.mp4 (default 12)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    parser.add_argument(
        "--size", type=parse_size, default=(1280, 720), help="WIDTHxHEIGHT (default 1280x720)"
    )
    parser.add_argument(
        "--assets",
        type=Path,
        help="folder with bus.jpg and zidane.jpg (default: the installed ultralytics package's assets)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate outputs that already exist")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.fps <= 0:
        parser.error(f"--seconds and --fps must be positive (got {args.seconds}, {args.fps})")

    try:
        assets: Path | None = args.assets
        out: Path = args.out_dir
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in PHOTOS:
            target = out / name
            if args.force or not target.is_file():
                # Only a missing photo needs ultralytics' assets (a copy of the out dir needs none).
                assets = assets if assets is not None else find_assets()
                tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
                shutil.copyfile(assets / name, tmp)
                os.replace(tmp, target)
                written.append(target)
        bus = read_image(out / "bus.jpg")
        zidane = read_image(out / "zidane.jpg")
        cv2.setNumThreads(max(1, min(4, os.cpu_count() or 1)))
        written += make_demo(out, bus, zidane, args.size, args.fps, args.seconds, args.force)
        written += make_enter_leave(out, zidane, args.size, args.fps, args.force)
        written += make_still_clips(out, zidane, args.force)
    except (OSError, RuntimeError) as exc:
        print(f"make_clip: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"up to date: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
