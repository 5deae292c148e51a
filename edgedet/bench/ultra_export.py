"""The ``ultra-export`` child: Ultralytics' own OpenVINO int8 export, as a user would make it --
``YOLO(weights).export(format="openvino", int8=True, data=<yaml>)`` with the dataset yaml over
``frames`` frames of the bench clip written to a temp folder (images only: calibration needs no
labels), at ``imgsz`` (a square side, or [h, w]: Ultralytics' rect export calibrates on rect
letterboxes too). Returns the model directory and the export's wall time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2

from edgedet.bench.spawn import BenchError, UltraExportSpec
from edgedet.model.export.calibration import read_frames


def export_ultra(spec: UltraExportSpec) -> dict[str, Any]:
    import importlib

    importlib.import_module("ultralytics")
    from ultralytics import YOLO

    work = Path(spec.work)
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(read_frames(spec.video, spec.frames, "--video").images):
        cv2.imwrite(str(images / f"{i:05d}.jpg"), image)
    model: Any = YOLO(spec.weights, task="detect")
    names = {int(k): str(v) for k, v in dict(model.names).items()}
    data = work / "calib.yaml"
    data.write_text(f"path: {work}\ntrain: images\nval: images\nnames: {names!r}\n")
    t0 = time.perf_counter()
    out = model.export(format="openvino", int8=True, data=str(data), imgsz=spec.imgsz, batch=1)
    elapsed = time.perf_counter() - t0
    if not out or not Path(out).is_dir():
        raise BenchError(f"ultralytics int8 export wrote nothing ({out!r})")
    # export() puts it beside the weights: move it into the bench's folder so nothing is left behind,
    # named by its input size (a square and a rect export of the same weights side by side)
    size = "x".join(map(str, spec.imgsz)) if isinstance(spec.imgsz, list) else f"{spec.imgsz}x{spec.imgsz}"
    target = work / Path(out).name.replace("_openvino_model", f"-{size}_openvino_model")
    Path(out).rename(target)
    return {"model": str(target), "export_s": round(elapsed, 1), "frames": spec.frames}
