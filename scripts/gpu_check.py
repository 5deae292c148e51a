#!/usr/bin/env python3
"""GPU (CUDA) check for edgedet, in one go: raw fp16 throughput and the pipeline with simulated cameras.

Needs only this repository, torch, opencv, numpy, pyyaml and prometheus-client (no broker, no
ultralytics). Prints:
  * raw forward throughput (img/s) at batch 1 / 8 / 32;
  * the real pipeline (FrameHub + CaptureWorker + InferenceWorker threads, cross-camera
    micro-batching) with 1 / 8 / 32 simulated live cameras: aggregate fps, end-to-end p50/p95;
  * the ratios pipeline / raw batched limit, against the goal (32 cameras >= 1500 FPS, >= 0.5x the
    batched fp16 limit, end-to-end p50 <= 15 ms).

Usage: scripts/gpu_check.sh [--model models/demo.torchscript] [--device cuda] [--seconds 10]
       python scripts/gpu_check.py --device cpu --quick     # the same code path on a CPU (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgedet.capture.worker import CaptureWorker  # noqa: E402
from edgedet.framequeue import FrameHub  # noqa: E402
from edgedet.inference import DecodeOptions, InferenceWorker  # noqa: E402
from edgedet.metrics import Metrics  # noqa: E402
from edgedet.model.torchscript import TorchScriptDetector  # noqa: E402
from edgedet.types import Detections, Frame  # noqa: E402


class SyntheticSource:
    """A live camera that always has a new decoded 1280x720 frame (a moving crop of a real photo
    when available, else noise). Decoding is skipped: the check measures edgedet, not a codec."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self._frames = frames
        self._i = 0

    fps = None
    is_file = False
    read_timeout_s = None

    def open(self) -> None:
        pass

    def grab(self) -> bool:
        self._i += 1
        time.sleep(0.0005)  # a real camera never hands out frames back to back
        return True

    def retrieve(self) -> np.ndarray:
        return self._frames[self._i % len(self._frames)]

    def close(self) -> None:
        pass


def sample_frames(n: int = 8) -> list[np.ndarray]:
    import cv2

    photo = None
    for candidate in (REPO / ".cache/demo/bus.jpg", REPO / ".cache/demo/zidane.jpg"):
        if candidate.is_file():
            photo = cv2.imread(str(candidate))
            break
    if photo is None:
        photo = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    big = cv2.resize(photo, (1600, 900))
    return [np.ascontiguousarray(big[i * 10 : i * 10 + 720, i * 20 : i * 20 + 1280]) for i in range(n)]


def raw_throughput(det: TorchScriptDetector, batch: int, seconds: float) -> float:
    x = det.input_buffer(batch)
    if x is None:  # a CPU: plain memory
        x = np.empty((batch, *det.input_shape[1:]), dtype=det.np_dtype)
    x[...] = 0.5
    det.infer(x)  # warm-up for this batch size
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        det.infer(x)
        n += batch
    return n / (time.perf_counter() - t0)


def pipeline(det: TorchScriptDetector, cameras: int, workers: int, batch: int, seconds: float) -> dict:
    stop = threading.Event()
    metrics = Metrics(CollectorRegistry())
    hub = FrameHub(stop, metrics)
    frames = sample_frames()
    latencies: list[float] = []
    lock = threading.Lock()

    def sink(d: Detections, _f: Frame) -> None:
        e2e = (time.monotonic_ns() - d.t_mono_ns) / 1e6
        with lock:
            latencies.append(e2e)

    caps = [
        CaptureWorker(f"cam{i}", lambda: SyntheticSource(frames), hub.add_camera(f"cam{i}", maxsize=1), stop, metrics)
        for i in range(cameras)
    ]
    pool = [
        InferenceWorker(i, hub, det, stop, sink, metrics, DecodeOptions(), batch_size=batch, batch_timeout_s=0.002)
        for i in range(workers)
    ]
    for t in caps + pool:
        t.start()
    time.sleep(min(2.0, seconds / 3))  # warm-up, then measure
    with lock:
        latencies.clear()
    t0 = time.perf_counter()
    time.sleep(seconds)
    with lock:
        window = list(latencies)
    elapsed = time.perf_counter() - t0
    stop.set()
    hub.close()
    for t in caps + pool:
        t.join(5)
    window.sort()
    return {
        "cameras": cameras, "workers": workers, "batch": batch, "fps": len(window) / elapsed,
        "e2e_p50_ms": statistics.median(window) if window else float("nan"),
        "e2e_p95_ms": window[int(0.95 * (len(window) - 1))] if window else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models/demo.torchscript"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fp32", action="store_true", help="run in fp32 (default fp16 on CUDA)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="tiny run (batches 1/2, 1/2 cameras) for CI on a CPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: CUDA is not available (torch", torch.__version__, ")", file=sys.stderr)
        return 2
    half = cuda and not args.fp32
    det = TorchScriptDetector(args.model, device=args.device, half=half)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"edgedet gpu_check: {name}, torch {torch.__version__}, model {det.info.name} "
          f"{'x'.join(map(str, det.info.imgsz))}, {'fp16' if half else 'fp32'}")
    batches = (1, 2) if args.quick else (1, 8, 32)
    cams = (1, 2) if args.quick else (1, 8, 32)
    seconds = 3.0 if args.quick else args.seconds
    raw = {b: raw_throughput(det, b, seconds) for b in batches}
    for b, v in raw.items():
        print(f"raw forward batch {b:>2}: {v:8.1f} img/s")
    results = []
    for c in cams:
        batch = min(c, max(batches))
        workers = 1 if c == 1 else (2 if args.quick else 4)
        r = pipeline(det, c, workers, batch, seconds)
        r["vs_raw_batched"] = r["fps"] / raw[max(batches)]
        results.append(r)
        print(f"pipeline {c:>2} camera(s), {workers} worker(s), batch<={batch:>2}: {r['fps']:8.1f} fps, "
              f"e2e p50 {r['e2e_p50_ms']:.1f} ms p95 {r['e2e_p95_ms']:.1f} ms, "
              f"{r['vs_raw_batched']:.2f}x raw batch-{max(batches)} limit")
    if not args.quick:
        top = results[-1]
        ok = top["fps"] >= 1500 and top["vs_raw_batched"] >= 0.5 and top["e2e_p50_ms"] <= 15
        print(f"goal (32 cameras >= 1500 FPS, >= 0.5x batched limit, p50 <= 15 ms): {'MET' if ok else 'NOT MET'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "raw": raw, "pipeline": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
