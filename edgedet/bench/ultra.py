"""The ``ultra`` child: Ultralytics' own ``YOLO(weights).predict(source=video, stream=True)`` on
the same video, for the comparison rows. Nothing of edgedet's pipeline runs here."""

from __future__ import annotations

import statistics
import time
from typing import Any

from edgedet.bench.spawn import BenchError, UltraSpec


def measure_ultra(spec: UltraSpec) -> dict[str, Any]:
    import importlib

    # ultralytics first, as a user would import it: it sets OMP_NUM_THREADS=1 when unset, before torch loads.
    ultralytics = importlib.import_module("ultralytics")
    import torch

    forced = spec.threads
    if forced:
        # Ultralytics' select_device() calls torch.set_num_threads(cores - 1) on CPU; pin our count.
        original = torch.set_num_threads
        original(forced)
        torch.set_num_threads = lambda _n: original(forced)  # type: ignore[assignment]
    from ultralytics import YOLO

    model: Any = YOLO(spec.weights, task="detect")
    stream: Any = model.predict(source=spec.video, stream=True, imgsz=spec.imgsz, verbose=False, device="cpu")
    stamps: list[float] = []
    infer_ms: list[float] = []
    observed: set[int] = set()
    shapes: list[list[int]] = []
    try:
        for result in stream:
            stamps.append(time.perf_counter())
            infer_ms.append(float(result.speed.get("inference", float("nan"))))
            observed.add(int(torch.get_num_threads()))
            if len(stamps) == 1:
                predictor = model.predictor
                inner = predictor.inference

                def inference(im: Any, *a: Any, _inner: Any = inner, **kw: Any) -> Any:
                    if len(shapes) < 1:
                        shapes.append([int(v) for v in im.shape])
                    return _inner(im, *a, **kw)

                predictor.inference = inference
            if spec.frames and len(stamps) >= spec.frames:
                break
    finally:
        stream.close()
    if len(stamps) < 2:
        raise BenchError(f"ultralytics produced {len(stamps)} result(s)")
    return {
        "frames": len(stamps),
        "fps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "fps_robust": 1.0 / statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)),
        "inference_ms": statistics.median(infer_ms[1:]),
        "threads_observed": sorted(observed),
        "input_shape": shapes[0] if shapes else None,
        "ultralytics": ultralytics.__version__,
    }

