"""The ``candidate`` child: one model file (any backend, any precision) at one thread layout --
the raw forward on one preprocessed frame in ``workers`` threads, then the daemon's pipeline on the
clip (``edgedet.bench.pipeline.measure_file``) with the same detector. Used by ``edgedet tune``
and the bench's variant rows."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from edgedet.bench.measure import read_frame, timed_forwards
from edgedet.bench.pipeline import measure_file
from edgedet.bench.spawn import BenchError, CandidateSpec
from edgedet.model import load_detector
from edgedet.model.base import Detector
from edgedet.preprocess import Preprocessor

WARMUP_CALLS = 3


def raw_forward(detector: Detector, tensor: Any, workers: int, iters: int) -> dict[str, float]:
    """``iters`` forwards shared by ``workers`` threads: img/s over the run, the median call."""
    lock = threading.Lock()
    remaining = [iters]
    calls: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(workers + 1)

    def body() -> None:
        try:
            for _ in range(WARMUP_CALLS):
                detector.infer(tensor)
            start.wait(timeout=300)
            timed_forwards(detector, tensor, lock, remaining, calls)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            start.abort()

    pool = [threading.Thread(target=body, name=f"bench-raw:{i}", daemon=True) for i in range(workers)]
    for t in pool:
        t.start()
    try:
        start.wait(timeout=300)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise BenchError(f"forward failed: {errors[0]}")
    return {"img_s": iters / elapsed, "call_ms": 1000.0 * statistics.median(calls)}


def measure_candidate(spec: CandidateSpec) -> dict[str, Any]:
    t0 = time.perf_counter()
    detector = load_detector(spec.model, backend=spec.backend, threads=spec.threads, workers=spec.workers)
    load_s = time.perf_counter() - t0
    image = read_frame(spec.video)
    pre = Preprocessor(*detector.info.imgsz, dtype=detector.np_dtype, layout=detector.input_layout)
    tensor = pre(image)[0].copy()
    raw = raw_forward(detector, tensor, spec.workers, spec.raw_iters)
    pipe = measure_file(detector, spec.video, spec.frames, spec.queue_size, spec.workers, spec.threads)
    return {
        "model": spec.model,
        "backend": detector.backend,
        "runtime": detector.runtime,
        "precision": detector.info.precision,
        "imgsz": list(detector.info.imgsz),
        "workers": spec.workers,
        "threads": spec.threads,
        "load_s": round(load_s, 2),
        "raw_img_s": raw["img_s"],
        "forward_ms": raw["call_ms"],
        "pipeline_fps": pipe["fps"],
        "pipeline_stages_ms": pipe["stages_ms"],
        "frames": pipe["frames"],
    }
