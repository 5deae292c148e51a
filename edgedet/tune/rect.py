"""Aspect-matched (rect) candidates for ``edgedet tune``.

The cameras' frame aspect comes from the config: a file camera's frame size (or ``--video``'s), a
device camera's ``width``/``height``; an RTSP/HTTP camera (or a device without a size) is taken to
have the clip's aspect. For each distinct aspect, every (format, precision) among the candidates
exported from the config's checkpoint needs an aspect-matched twin (``edgedet export --rect W:H``
at the same long side). Missing twins are exported here when ``--weights`` is given (one
``edgedet export`` subprocess each, with its accuracy guard), else the exact commands are printed.

A rect model is recommended only when it matches every enabled camera's aspect: on frames of
another aspect it would run with extra padding and smaller objects than the guard judged.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from edgedet.config import CameraConfig
from edgedet.model.base import NCNN_DIR_SUFFIX, OPENVINO_DIR_SUFFIX
from edgedet.model.export.trace import rect_imgsz

log = logging.getLogger(__name__)

FORMATS = {"torchscript": "torchscript", "onnxruntime": "onnx", "openvino": "openvino", "ncnn": "ncnn"}
EXPORT_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Aspect:
    """One frame size shared by ``cameras`` (``width`` x ``height`` pixels)."""

    width: int
    height: int
    cameras: tuple[str, ...]

    @property
    def ratio(self) -> str:
        g = math.gcd(self.width, self.height)
        return f"{self.width // g}:{self.height // g}"


@dataclass(frozen=True, slots=True)
class Variant:
    """An aspect-matched model to add: ``fmt`` / ``precision`` at ``imgsz`` (h, w), written to ``output``."""

    fmt: str
    precision: str
    long_side: int
    aspect: Aspect
    imgsz: tuple[int, int]
    output: Path
    calib_frames: int | None
    val_frames: int | None


def video_size(path: str) -> tuple[int, int] | None:
    """(width, height) of a video file's frames, or None when OpenCV cannot open it."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return None
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    return (w, h) if w > 0 and h > 0 else None


def camera_aspects(cameras: Mapping[str, CameraConfig], video: str) -> list[Aspect]:
    """The distinct frame sizes of the enabled cameras (see the module docstring for the sources)."""
    clip = video_size(video)
    sizes: dict[tuple[int, int], list[str]] = {}
    for name, cam in cameras.items():
        if not cam.enabled:
            continue
        size: tuple[int, int] | None = None
        if cam.kind == "file":
            size = video_size(str(cam.url))
        elif cam.kind == "device" and cam.width and cam.height:
            size = (cam.width, cam.height)
        if size is None:
            size = clip
            log.info("tune: camera %s (%s): frame size taken from the clip %s", name, cam.kind, video)
        if size is not None:
            sizes.setdefault(size, []).append(name)
    if not sizes and clip is not None:
        sizes[clip] = ["--video"]
    return [Aspect(w, h, tuple(names)) for (w, h), names in sizes.items()]


def matched_shape(long_side: int, aspect: Aspect, stride: int) -> tuple[int, int]:
    """The (h, w) input ``edgedet export --rect W:H`` gives at ``long_side`` for this aspect."""
    return rect_imgsz(long_side, f"{aspect.width}:{aspect.height}", stride)


def fits(imgsz: Sequence[int], stride: int, aspects: Sequence[Aspect]) -> str | None:
    """None when a model of input ``imgsz`` suits every camera (square, or matched to each one's
    aspect); else why not."""
    h, w = int(imgsz[0]), int(imgsz[1])
    if h == w:
        return None
    for aspect in aspects:
        if matched_shape(max(h, w), aspect, stride) != (h, w):
            return (f"{h}x{w} input, but camera {aspect.cameras[0]} has {aspect.width}x{aspect.height} frames "
                    f"({aspect.ratio})")
    return None


def _rect_name(path: Path, imgsz: tuple[int, int]) -> str:
    tag = f"-{imgsz[0]}x{imgsz[1]}"
    for suffix in (OPENVINO_DIR_SUFFIX, NCNN_DIR_SUFFIX):
        if path.name.endswith(suffix):
            return path.name.removesuffix(suffix) + tag + suffix
    return path.stem + tag + path.suffix


def missing_variants(models: Sequence[tuple[str, str, str, tuple[int, int], int, Mapping[str, object]]],
                     aspects: Sequence[Aspect], export_dir: Path) -> list[Variant]:
    """Aspect-matched twins the candidates lack. ``models``: (path, backend, precision, imgsz,
    stride, edgedet metadata) of the candidates exported from the config's checkpoint."""
    have = {(FORMATS.get(b, b), p, tuple(s)) for _, b, p, s, _, _ in models}
    out: dict[tuple[str, str, tuple[int, int]], Variant] = {}
    for path, backend, precision, imgsz, stride, ours in models:
        if imgsz[0] != imgsz[1]:
            continue  # a rect model is a twin, not a source of twins
        fmt = FORMATS.get(backend, backend)
        for aspect in aspects:
            shape = matched_shape(imgsz[0], aspect, stride)
            key = (fmt, precision, shape)
            if shape[0] == shape[1] or key in have or key in out:
                continue
            out[key] = Variant(fmt, precision, imgsz[0], aspect, shape, export_dir / _rect_name(Path(path), shape),
                               _count(ours.get("calib_frames")), _count(ours.get("val_frames")))
    return list(out.values())


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def export_args(v: Variant, weights: str, video: str, min_f1: float) -> list[str]:
    """``edgedet export`` arguments that add ``v`` (the guard included for bf16 / int8)."""
    args = ["export", "--weights", weights, "--format", v.fmt, "--imgsz", str(v.long_side),
            "--rect", v.aspect.ratio]
    if v.precision != "fp32":
        args += ["--precision", v.precision]
    if v.precision == "int8":
        args += ["--calib", video] + (["--calib-frames", str(v.calib_frames)] if v.calib_frames else [])
    elif v.precision == "bf16":
        args += ["--val", video]
    if v.precision in ("int8", "bf16"):
        args += (["--val-frames", str(v.val_frames)] if v.val_frames else []) + ["--min-f1", f"{min_f1:g}"]
    return args + ["-o", str(v.output)]


def shell_line(args: Sequence[str]) -> str:
    import shlex

    return "edgedet " + " ".join(shlex.quote(a) for a in args)


def run_export(args: Sequence[str]) -> tuple[bool, str]:
    """One ``edgedet export`` in a subprocess (it imports torch and ultralytics; tune does not);
    (ok, its last line)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True,
                              timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"did not finish within {EXPORT_TIMEOUT_S:.0f} s"
    lines = (proc.stderr if proc.returncode else proc.stdout).strip().splitlines()
    agree = [ln for ln in lines if ln.startswith("agreement with fp32")]
    return proc.returncode == 0, (agree or lines or [f"exit {proc.returncode}"])[-1]
