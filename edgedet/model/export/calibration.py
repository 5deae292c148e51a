"""Frames for calibration and for the accuracy guard, from the user's own cameras.

``--calib`` / ``--val`` take a directory of images, a video file, or a stream URL (rtsp://,
http(s)://). Files give frames sampled evenly over their length; a stream gives frames spread
evenly over ``stream_seconds`` of reading. Frames are letterboxed by edgedet's own
``Preprocessor``, so calibration and the guard see exactly what inference sees.

Without ``--val``, the frames of ``--calib`` are split: every ``k``-th sampled frame is held out
for the guard and never used for calibration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgedet.errors import InputError
from edgedet.preprocess import Letterbox, Preprocessor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
DEFAULT_CALIB_FRAMES = 300
DEFAULT_VAL_FRAMES = 60
STREAM_OPEN_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class FrameSet:
    """Sampled BGR frames and where they came from (``source`` is what metadata records)."""

    source: str
    kind: str  # images | video | stream
    images: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Frames letterboxed into model inputs: ``tensors[i]`` is 1x3xHxW float32 NCHW (a copy)."""

    images: tuple[np.ndarray, ...]
    tensors: tuple[np.ndarray, ...]
    geometry: tuple[Letterbox, ...]


def even_indices(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when ``count >= total``)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def split_held_out(count: int, held_out: int) -> tuple[list[int], list[int]]:
    """Indices ``0..count-1`` split into (calibration, held-out): held-out ones spread evenly."""
    if held_out <= 0 or count < 2:
        return list(range(count)), []
    held_out = min(held_out, count // 2)
    val = set(even_indices(count, held_out))
    return [i for i in range(count) if i not in val], sorted(val)


def is_stream(source: str) -> bool:
    return source.lower().startswith(STREAM_PREFIXES)


def _flag_name(flag: str, source: str) -> str:
    return f"{flag} {source}"


def read_frames(source: str, count: int, flag: str = "--calib", stream_seconds: float = 60.0) -> FrameSet:
    """``count`` frames from ``source`` (a directory of images, a video file or a stream URL)."""
    if count <= 0:
        raise InputError(f"{flag}: frame count must be > 0 (got {count})")
    if is_stream(source):
        return FrameSet(source, "stream", tuple(_read_stream(source, count, flag, stream_seconds)))
    path = Path(source)
    if path.is_dir():
        return FrameSet(source, "images", tuple(_read_images(path, count, flag)))
    if not path.exists():
        raise InputError(f"{flag}: {source}: no such file or directory (want a folder of images, a video or an URL)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path))
        if image is None:
            raise InputError(f"{flag}: {source}: cannot read image")
        return FrameSet(source, "images", (image,))
    return FrameSet(source, "video", tuple(_read_video(path, count, flag)))


def _read_images(directory: Path, count: int, flag: str) -> list[np.ndarray]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{flag}: {directory}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    images = []
    for i in even_indices(len(files), count):
        image = cv2.imread(str(files[i]))
        if image is None:
            log.warning("%s: %s: cannot read image; skipped", flag, files[i])
            continue
        images.append(image)
    if not images:
        raise InputError(f"{flag}: {directory}: none of its images could be read")
    return images


def _read_video(path: Path, count: int, flag: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"{flag}: {path}: not a video OpenCV can open")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        wanted = even_indices(total, count) if total > 0 else []
        images: list[np.ndarray] = []
        if wanted:
            want = set(wanted)
            # grab() every frame (cheap, no colour conversion) and retrieve() the wanted ones:
            # seeking is inexact in many containers, reading through is not.
            for index in range(wanted[-1] + 1):
                if not cap.grab():
                    break
                if index in want:
                    ok, image = cap.retrieve()
                    if ok and image is not None:
                        images.append(image)
        else:  # no frame count (some containers): read all, then sample
            frames = []
            while True:
                ok, image = cap.read()
                if not ok or image is None:
                    break
                frames.append(image)
            images = [frames[i] for i in even_indices(len(frames), count)]
    finally:
        cap.release()
    if not images:
        raise InputError(f"{flag}: {path}: no frame could be read from this video")
    return images


def _read_stream(url: str, count: int, flag: str, seconds: float) -> list[np.ndarray]:
    """``count`` frames spread evenly over ``seconds`` of a live stream (reads through, keeps some)."""
    from edgedet.redact import mask_url

    shown = mask_url(url)
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(STREAM_OPEN_TIMEOUT_S * 1000),
                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(STREAM_OPEN_TIMEOUT_S * 1000)])
    try:
        if not cap.isOpened():
            raise InputError(f"{flag}: {shown}: cannot open the stream")
        interval = max(0.0, seconds) / count
        images: list[np.ndarray] = []
        next_t = time.monotonic()
        deadline = next_t + seconds + STREAM_OPEN_TIMEOUT_S
        while len(images) < count and time.monotonic() < deadline:
            if not cap.grab():
                break
            now = time.monotonic()
            if now >= next_t:
                ok, image = cap.retrieve()
                if ok and image is not None:
                    images.append(image)
                    next_t = now + interval
    finally:
        cap.release()
    if not images:
        raise InputError(f"{flag}: {shown}: no frame could be read from the stream")
    if len(images) < count:
        log.warning("%s: got %d of %d frames from %s", flag, len(images), count, shown)
    return images


def prepare(images: Sequence[np.ndarray], imgsz: tuple[int, int]) -> Prepared:
    """Letterbox ``images`` into NCHW float32 model inputs with the daemon's preprocessing."""
    pre = Preprocessor(*imgsz)
    tensors, geos = [], []
    for image in images:
        tensor, geo = pre(image)
        tensors.append(np.ascontiguousarray(tensor, dtype=np.float32).copy())
        geos.append(geo)
    return Prepared(tuple(images), tuple(tensors), tuple(geos))


@dataclass(frozen=True, slots=True)
class Frames:
    """Calibration and held-out frames for one export."""

    calib: Prepared | None
    val: Prepared
    calib_source: str | None
    val_source: str

    def describe(self) -> dict[str, object]:
        return {
            "calib_source": self.calib_source,
            "calib_frames": len(self.calib.tensors) if self.calib else 0,
            "val_source": self.val_source,
            "val_frames": len(self.val.tensors),
        }


def gather(imgsz: tuple[int, int], calib: str | None, val: str | None, calib_frames: int = DEFAULT_CALIB_FRAMES,
           val_frames: int = DEFAULT_VAL_FRAMES, fallback: Sequence[np.ndarray] = (),
           stream_seconds: float = 60.0) -> Frames:
    """Read and letterbox the calibration and held-out frames.

    ``val`` given: held-out frames from it, ``calib`` wholly for calibration. Otherwise the
    ``calib`` frames are split (held-out spread evenly). Neither: ``fallback`` images are the
    held-out set (a weak check; the caller warns), and there is nothing to calibrate on.
    """
    if calib is not None and val is None:
        sampled = read_frames(calib, calib_frames + val_frames, "--calib", stream_seconds)
        cal_idx, val_idx = split_held_out(len(sampled), val_frames)
        if not val_idx:
            raise InputError(f"--calib {calib}: only {len(sampled)} frame(s); give --val or more frames")
        return Frames(prepare([sampled.images[i] for i in cal_idx], imgsz),
                      prepare([sampled.images[i] for i in val_idx], imgsz), calib, calib)
    cal = prepare(read_frames(calib, calib_frames, "--calib", stream_seconds).images, imgsz) if calib else None
    if val is not None:
        return Frames(cal, prepare(read_frames(val, val_frames, "--val", stream_seconds).images, imgsz), calib, val)
    if not fallback:
        raise InputError("--val: no held-out frames for the accuracy guard; give --val or --calib")
    return Frames(cal, prepare(list(fallback), imgsz), calib, "ultralytics sample images")
