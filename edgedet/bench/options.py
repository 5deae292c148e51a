"""``edgedet bench`` options: the argument parser and the checked ``Options`` it resolves to.

Relative paths, the defaults included, are taken from the current directory (where ``make`` and a
user run the bench): an installed edgedet has no checkout to fall back on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from edgedet.config import CameraConfig
from edgedet.errors import InputError

DEFAULT_VIDEO = ".cache/demo/demo.mp4"
DEFAULT_MODEL = "models/demo.torchscript"
DEFAULT_WEIGHTS = ".cache/demo-model/best.pt"


@dataclass(frozen=True, slots=True)
class Options:
    video: Path
    model: Path
    model_rect: Path | None
    weights: Path | None
    frames: int | None  # video frames for pipeline / Ultralytics rows (None: all)
    repeats: int
    raw_iters: int
    live_seconds: float
    live_warmup_s: float
    live_source: str  # auto | rtsp | file
    live_frames: Path | None  # JPEG sequence for the RTSP test server
    ultralytics: bool
    ultra_default_threads: bool  # also run Ultralytics at its own thread setting
    workers: int | None
    threads: int | None
    queue_size: int
    quick: bool
    json_path: Path | None
    viewers: int = 0  # > 0: also the live-viewers row (MJPEG viewers of the web console)
    variants: tuple[Path, ...] = ()  # other backends / precisions of the model (edgedet.bench.variants)
    ultra_int8: bool = False  # Ultralytics' own OpenVINO int8 export as the peer's fastest row
    motion: bool = False  # only the detect.mode always-vs-motion comparison (edgedet.bench.motion)
    min_interval_s: float = 0.5
    max_interval_s: float = 10.0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgedet bench",
        description="Raw model vs edgedet pipeline vs Ultralytics throughput, and live latency, on this machine. "
        "Runs every measurement in its own process, one at a time. Relative paths are taken from the "
        "current directory.",
    )
    ap.add_argument("--video", default=None, help=f"video file (default ./{DEFAULT_VIDEO})")
    ap.add_argument("--model", default=None, help=f"TorchScript model (default ./{DEFAULT_MODEL})")
    ap.add_argument("--model-rect", default=None, metavar="PATH",
                    help="an aspect-matched export (edgedet export --rect 16:9) to compare with --model")
    ap.add_argument("--weights", default=None,
                    help=f"Ultralytics .pt checkpoint for the .pt row (default ./{DEFAULT_WEIGHTS} when present)")
    ap.add_argument("--frames", type=int, default=None, help="video frames per pipeline/Ultralytics run (default all)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds; rows report the median (default 3)")
    ap.add_argument("--raw-iters", type=int, default=None, help="forwards per raw layout per round (default 40)")
    ap.add_argument("--live-seconds", type=float, default=None, help="live measurement window (default 20)")
    ap.add_argument("--live-source", choices=["auto", "rtsp", "file"], default="auto",
                    help="auto: the GStreamer RTSP test server when available, else the file paced at its fps")
    ap.add_argument("--live-frames", default=None, metavar="DIR",
                    help="JPEG sequence served over RTSP (default: frames/ next to the video)")
    ap.add_argument("--no-ultralytics", action="store_true", help="skip the Ultralytics rows")
    ap.add_argument("--workers", type=int, default=None, help="inference workers (default: thread_layout)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: thread_layout)")
    ap.add_argument("--queue-size", type=int, default=None, help="camera queue size (default: config default)")
    ap.add_argument("--quick", action="store_true",
                    help="few frames, 1 round, short live window, Ultralytics only at forced threads (for tests)")
    ap.add_argument("--viewers", type=int, default=0, metavar="N",
                    help="also measure pipeline fps with N live MJPEG viewers of the web console vs none "
                    "(needs the web extra; default: skipped)")
    ap.add_argument("--variant", action="append", default=[], metavar="PATH",
                    help="another export of the model (bf16 TorchScript, OpenVINO f32/bf16/int8, ONNX fp32/int8): "
                         "raw forward and pipeline rows at 1xN and Nx1 threads (repeatable)")
    ap.add_argument("--ultra-int8", action="store_true",
                    help="also export --weights with Ultralytics' own OpenVINO int8 (calibrated on 60 clip frames) "
                         "and run it with Ultralytics: the peer's fastest CPU row")
    ap.add_argument("--motion", action="store_true",
                    help="only compare detect.mode always and motion on the generated static_scene and slow_plume "
                         "clips (next to --video), with the motion measure's cost and cameras per mode")
    ap.add_argument("--min-interval", type=float, default=0.5, metavar="S", help="--motion: detect.min_interval_s")
    ap.add_argument("--max-interval", type=float, default=10.0, metavar="S", help="--motion: detect.max_interval_s")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the full results as JSON")
    return ap


def _find(path: str | None, default: str, what: str, flag: str, hint: str) -> Path:
    """``path`` when given (it must exist), else ``default`` in the current directory."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{what} {p}: no such file")
        return p
    p = Path(default)
    if not p.is_file():
        raise InputError(f"{what}: {default} not found in {Path.cwd()}; give {flag} or {hint}")
    return p


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InputError(f"{name} must be > 0 (got {value})")


def _queue_default() -> int:
    default = next(f.default for f in fields(CameraConfig) if f.name == "queue_size")
    return default if isinstance(default, int) else 1


def resolve_options(args: argparse.Namespace) -> Options:
    for flag, value in (("--frames", args.frames), ("--repeats", args.repeats), ("--raw-iters", args.raw_iters),
                        ("--live-seconds", args.live_seconds), ("--workers", args.workers),
                        ("--threads", args.threads), ("--queue-size", args.queue_size)):
        _positive(flag, value)
    video = _find(args.video, DEFAULT_VIDEO, "video", "--video", "make it with `make assets`")
    model = _find(args.model, DEFAULT_MODEL, "model", "--model", "export it with `make model`")
    model_rect = _find(args.model_rect, "", "--model-rect", "--model-rect", "") if args.model_rect else None
    if args.weights is not None:
        weights: Path | None = _find(args.weights, DEFAULT_WEIGHTS, "weights", "--weights", "")
    else:
        weights = Path(DEFAULT_WEIGHTS) if Path(DEFAULT_WEIGHTS).is_file() else None
    live_frames = Path(args.live_frames) if args.live_frames else video.parent / "frames"
    quick = bool(args.quick)
    return Options(
        video=video,
        model=model,
        model_rect=model_rect,
        weights=weights,
        frames=args.frames if args.frames is not None else (16 if quick else None),
        repeats=args.repeats or (1 if quick else 3),
        raw_iters=args.raw_iters or (6 if quick else 40),
        live_seconds=args.live_seconds or (4.0 if quick else 20.0),
        live_warmup_s=1.0 if quick else 2.0,
        live_source=args.live_source,
        live_frames=live_frames if (live_frames / "00000.jpg").is_file() else None,
        ultralytics=not args.no_ultralytics,
        ultra_default_threads=not quick,
        workers=args.workers,
        threads=args.threads,
        queue_size=int(args.queue_size or _queue_default()),
        quick=quick,
        json_path=Path(args.json) if args.json else None,
        viewers=max(0, int(args.viewers or 0)),
        variants=tuple(_variant(v) for v in args.variant),
        ultra_int8=bool(args.ultra_int8),
        motion=bool(args.motion),
        min_interval_s=float(args.min_interval),
        max_interval_s=float(args.max_interval),
    )


def _variant(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"--variant {p}: no such file or directory")
    return p
