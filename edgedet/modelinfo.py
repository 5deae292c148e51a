"""``edgedet info MODEL``: what a model file says about itself -- input, classes, precision, how it
was calibrated and how well it agrees with the fp32 model (written by ``edgedet export``).

Reads metadata only: TorchScript, OpenVINO and ncnn files without loading a runtime, ONNX through
onnxruntime (its metadata lives in the protobuf).
"""

from __future__ import annotations

import json
from typing import Any

from edgedet.model import resolve_backend
from edgedet.model.base import ModelInfo


def read_info(path: str, backend: str = "auto") -> ModelInfo:
    kind = resolve_backend(path, backend)
    if kind == "onnxruntime":
        from edgedet.model.onnxruntime import read_metadata as onnx_meta

        return onnx_meta(path)
    if kind == "openvino":
        from edgedet.model.openvino import read_metadata as ov_meta

        return ov_meta(path)
    if kind == "ncnn":
        from edgedet.model.ncnn import read_metadata as ncnn_meta

        return ncnn_meta(path)
    from edgedet.model.torchscript import read_metadata as ts_meta

    return ts_meta(path)


def accuracy(info: ModelInfo) -> dict[str, Any] | None:
    """The export's agreement figures with fp32, or None (fp32 models, other tools' exports)."""
    ours = info.extra.get("edgedet")
    value = ours.get("agreement") if isinstance(ours, dict) else None
    return value if isinstance(value, dict) and "f1" in value else None


def describe(path: str, backend: str = "auto", as_json: bool = False) -> str:
    info = read_info(path, backend)
    if as_json:
        return json.dumps(info.extra, indent=2, default=str)
    raw = info.extra.get("edgedet")
    ours: dict[str, Any] = raw if isinstance(raw, dict) else {}
    lines = [
        f"model      {path} ({resolve_backend(path, backend)})",
        f"input      1x3x{info.imgsz[0]}x{info.imgsz[1]}, stride {info.stride}",
        f"classes    {info.num_classes}: {', '.join(info.names[:10])}{' ...' if info.num_classes > 10 else ''}",
        f"precision  {info.precision}",
        f"exported   by {info.extra.get('author', '?')} {ours.get('version') or info.extra.get('version', '')}"
        f" on {ours.get('exported_at') or info.extra.get('date', '?')}"
        + (f", torch {ours['torch']}" if ours.get("torch") else ""),
    ]
    if ours.get("source"):
        lines.append(f"source     {ours['source']} (sha256 {str(ours.get('source_sha256', '?'))[:16]}...)")
    if ours.get("quantization"):
        lines.append(f"method     {ours['quantization']}")
    if ours.get("calib_source") or ours.get("calib_frames"):
        lines.append(f"calibrated on {ours.get('calib_frames', 0)} frames of {ours.get('calib_source')}")
    agree = accuracy(info)
    if agree is not None:
        lines.append(f"held out   {ours.get('val_frames', agree.get('frames'))} frames of {ours.get('val_source')}")
        lines.append(
            f"vs fp32    F1 {agree['f1']:.3f}, precision {agree['precision']:.3f}, recall {agree['recall']:.3f} "
            f"({agree['matched']}/{agree['reference']} fp32 detections matched, {agree['candidate']} found); "
            f"worst box {agree['worst_box_px']:.1f} px, worst score {agree['worst_score']:.3f}; "
            f"guard {ours.get('guard', '?')} (min F1 {ours.get('min_f1', '?')})")
    elif info.precision != "fp32":
        lines.append("vs fp32    not checked (no agreement figures in the metadata)")
    return "\n".join(lines)
