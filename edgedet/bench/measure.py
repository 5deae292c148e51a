"""The ``edge`` child: raw forward throughput per thread layout, the serial per-frame costs outside
the forward, and the pipeline on the file (``edgedet.bench.pipeline``), all with one loaded
TorchScript model."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import cv2
import numpy as np
import torch

from edgedet.bench.pipeline import measure_file, ms
from edgedet.bench.spawn import EdgeSpec
from edgedet.capture.source import OpenCvSource
from edgedet.errors import InputError
from edgedet.inference import thread_layout
from edgedet.model import torch_version
from edgedet.model.base import Detector
from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads
from edgedet.postprocess import decode
from edgedet.preprocess import Preprocessor

WARMUP_CALLS = 2  # forwards per new thread before timing (OpenMP team start; the detector warmed up already)
BARRIER_TIMEOUT_S = 300.0

Where = Literal["main", "thread"]


def measure_edge(spec: EdgeSpec) -> dict[str, Any]:
    default_threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    count, threads = thread_layout(None, spec.workers, spec.threads, throughput=True)  # file, back-pressure
    set_torch_threads(threads)  # as app.run does, before loading
    detector = TorchScriptDetector(spec.model)
    image = read_frame(spec.video)
    pre = Preprocessor(*detector.info.imgsz, dtype=detector.np_dtype, layout=detector.input_layout)
    tensor = pre(image)[0].copy()

    layouts: list[tuple[int, int, Where]] = [(1, cores, "main"), (1, cores, "thread"), (cores, 1, "thread")]
    if cores >= 4:
        layouts.append((2, cores // 2, "thread"))
    if (count, threads) not in {(w, t) for w, t, _ in layouts}:
        layouts.append((count, threads, "thread"))
    raw = [raw_layout(detector, tensor, w, t, where, spec.raw_iters) for w, t, where in dict.fromkeys(layouts)]

    set_torch_threads(threads)
    diag = serial_costs(detector, pre, image, spec.video)
    pipeline = measure_file(detector, spec.video, spec.frames, spec.queue_size, count, threads)
    return {
        "torch": torch_version(),
        "opencv": cv2.__version__,
        "torch_default_threads": default_threads,
        "imgsz": list(detector.info.imgsz),
        "video_size": f"{image.shape[1]}x{image.shape[0]}",
        "raw": raw,
        "diag_ms": diag,
        "pipeline": pipeline,
    }


def timed_forwards(detector: Detector, tensor: np.ndarray, lock: threading.Lock, remaining: list[int],
                   calls: list[float]) -> None:
    """Take forwards off ``remaining`` one at a time (shared by several threads) and append each
    call's duration to ``calls``, until none is left."""
    while True:
        with lock:
            if remaining[0] <= 0:
                return
            remaining[0] -= 1
        t = time.perf_counter()
        detector.infer(tensor)
        dt = time.perf_counter() - t
        with lock:
            calls.append(dt)


def raw_layout(detector: Detector, tensor: np.ndarray, workers: int, threads: int, where: Where,
               iters: int) -> dict[str, Any]:
    """``iters`` forwards shared by ``workers`` threads of ``threads`` torch threads each (or the
    main thread alone): img/s over the whole run and from the median call."""
    lock = threading.Lock()
    remaining = [iters]
    calls: list[float] = []
    observed: set[int] = set()
    errors: list[BaseException] = []

    def loop() -> None:
        timed_forwards(detector, tensor, lock, remaining, calls)

    def setup() -> None:
        set_torch_threads(threads)
        with lock:
            observed.add(int(torch.get_num_threads()))
        for _ in range(WARMUP_CALLS):
            detector.infer(tensor)

    if where == "main":
        setup()
        t0 = time.perf_counter()
        loop()
        elapsed = time.perf_counter() - t0
    else:
        barrier = threading.Barrier(workers + 1)

        def body() -> None:
            try:
                setup()
                barrier.wait(timeout=BARRIER_TIMEOUT_S)
                loop()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
                barrier.abort()

        pool = [threading.Thread(target=body, name=f"bench-raw:{i}", daemon=True) for i in range(workers)]
        for t in pool:
            t.start()
        try:
            barrier.wait(timeout=BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
    img_s = iters / elapsed
    name = f"{workers}x{threads}" + (" main" if where == "main" else "")
    return {
        "name": name,
        "workers": workers,
        "threads": threads,
        "where": where,
        "iters": iters,
        "img_s": img_s,
        "img_s_robust": workers / statistics.median(calls),
        "call_ms": 1000.0 * statistics.median(calls),
        "threads_observed": sorted(observed),
    }


def serial_costs(detector: Detector, pre: Preprocessor, image: np.ndarray, video: str) -> dict[str, float]:
    """Median serial costs (ms) of the per-frame work outside the forward."""

    def timed(fn: Callable[[], object], n: int) -> float:
        fn()
        samples = []
        for _ in range(n):
            t = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t)
        return ms(statistics.median(samples))

    tensor, geo = pre(image)
    tensor = tensor.copy()
    out = detector.infer(tensor)
    memory_format = torch.channels_last if detector.device == "cpu" else torch.contiguous_format

    def to_input() -> None:
        torch.from_numpy(tensor).to(dtype=torch.float32, memory_format=memory_format)

    source = OpenCvSource(video, "file")
    source.open()
    grab_ns, retrieve_ns = [], []
    try:
        for _ in range(40):
            t = time.perf_counter_ns()
            if not source.grab():
                break
            t2 = time.perf_counter_ns()
            if source.retrieve() is None:
                break
            grab_ns.append(t2 - t)
            retrieve_ns.append(time.perf_counter_ns() - t2)
    finally:
        source.close()
    with torch.inference_mode():
        to_input_ms = timed(to_input, 20)
    return {
        "video_grab": ms(statistics.median(grab_ns)) if grab_ns else float("nan"),
        "video_retrieve": ms(statistics.median(retrieve_ns)) if retrieve_ns else float("nan"),
        "preprocess": timed(lambda: pre(image), 20),
        "input_to_channels_last": to_input_ms,
        "postprocess": timed(lambda: decode(out, geo, detector.info.names), 20),
        "output_to_numpy": timed(lambda: np.ascontiguousarray(out), 5),
    }


def read_frame(video: str) -> np.ndarray:
    """The first frame of ``video``."""
    cap = cv2.VideoCapture(video)
    try:
        ok, image = cap.read()
    finally:
        cap.release()
    if not ok or image is None:
        raise InputError(f"{video}: cannot read a frame")
    return np.asarray(image)
