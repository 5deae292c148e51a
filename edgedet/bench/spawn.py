"""The parent/child contract of the bench: what each measurement child is asked (a spec, as JSON
on its command line), how it is started, and how its failure comes back.

A child is ``python -m edgedet.bench.children KIND SPEC_JSON RESULT_PATH``; it writes its result
as JSON to ``RESULT_PATH`` and exits 0. The parent runs one child at a time and never imports
torch or ultralytics itself (see ``edgedet.bench``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import edgedet
from edgedet.errors import EdgedetError

CHILD_MODULE = "edgedet.bench.children"


class BenchError(EdgedetError):
    """A measurement child failed (exit 1)."""


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    """Raw forward layouts, serial costs and the pipeline on the file, with one TorchScript model."""

    kind: ClassVar[str] = "edge"
    model: str
    video: str
    frames: int | None  # None: the whole file
    workers: int | None  # None: thread_layout's choice
    threads: int | None
    queue_size: int
    raw_iters: int


@dataclass(frozen=True, slots=True)
class LiveSpec:
    """The pipeline on a real-time source: RTSP, or the file paced at its fps and looped."""

    kind: ClassVar[str] = "live"
    model: str
    source: Literal["rtsp", "file"]
    url: str
    seconds: float
    warmup_s: float
    workers: int | None
    threads: int | None
    queue_size: int
    viewers: int = 0  # > 0: the "live viewers" row (edgedet.bench.viewers): fps without / with MJPEG viewers


@dataclass(frozen=True, slots=True)
class UltraRow:
    """One Ultralytics configuration (a row of the report)."""

    name: str
    format: str  # torchscript | pt
    weights: str
    imgsz: list[int] | int  # [h, w] for the square TorchScript file, the long side for a rect .pt
    rect: bool
    threads: int | None  # forced torch threads; None: Ultralytics' own setting


@dataclass(frozen=True, slots=True)
class UltraSpec(UltraRow):
    """An ``UltraRow`` run on the video."""

    kind: ClassVar[str] = "ultra"
    video: str
    frames: int | None

    @classmethod
    def of(cls, row: UltraRow, video: str, frames: int | None) -> UltraSpec:
        return cls(**asdict(row), video=video, frames=frames)


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    """One model file of any backend and precision at one thread layout: raw forward and pipeline
    (``edgedet tune`` and the bench's variant rows)."""

    kind: ClassVar[str] = "candidate"
    model: str
    backend: str  # auto | torchscript | onnxruntime | openvino | ncnn
    video: str
    frames: int | None
    workers: int
    threads: int
    queue_size: int
    raw_iters: int


@dataclass(frozen=True, slots=True)
class UltraExportSpec:
    """Ultralytics' own OpenVINO int8 export of ``weights``, calibrated on ``frames`` clip frames."""

    kind: ClassVar[str] = "ultra-export"
    weights: str
    video: str
    work: str
    imgsz: int | list[int]  # 640, or [h, w] for a rect export
    frames: int


@dataclass(frozen=True, slots=True)
class MotionSpec:
    """detect.mode always vs motion on the generated clips (edgedet.bench.motion)."""

    kind: ClassVar[str] = "motion"
    model: str
    clips_dir: str
    video: str  # a 1280x720 clip for the cost of the motion measure
    min_interval_s: float
    max_interval_s: float
    threads: int | None


Spec = EdgeSpec | LiveSpec | UltraSpec | CandidateSpec | UltraExportSpec | MotionSpec
S = TypeVar("S", EdgeSpec, LiveSpec, UltraSpec, CandidateSpec, UltraExportSpec, MotionSpec)


def load_spec(cls: type[S], text: str) -> S:
    """A spec back from the JSON a child got on its command line."""
    return cls(**json.loads(text))


def run_child(spec: Spec, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement child and return its JSON result; BenchError with its stderr tail on failure.

    The child gets this process's environment without ``OMP_NUM_THREADS`` (plus ``env``), and
    imports the same edgedet as this process.
    """
    kind = spec.kind
    child_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # The folder this edgedet was imported from (site-packages or a source tree).
    package_root = str(Path(edgedet.__file__).resolve().parent.parent)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    child_env["YOLO_OFFLINE"] = "1"
    child_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="edgedet-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", CHILD_MODULE, kind, json.dumps(asdict(spec)), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env)
        except subprocess.TimeoutExpired:
            raise BenchError(f"bench child {kind} did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0 or not out.is_file():
            tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-4:])
            raise BenchError(f"bench child {kind} failed (exit {proc.returncode}): {tail}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result
