"""Shared by the optional backends: metadata from string maps, the output-layout check, errors."""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import ModelError
from edgedet.model import ModelInfo, parse_metadata

# Keys that Ultralytics writes as str(python value) into ONNX metadata_props (it eval()s them back).
_LITERAL_KEYS = frozenset({"names", "imgsz", "args", "kpt_shape", "end2end"})
_INT_KEYS = frozenset({"stride", "batch", "channels"})


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def runtime_message(exc: BaseException) -> str:
    """The informative line of an OpenVINO/ONNX Runtime error (skips "Exception from file:line:")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0]


def decode_string_props(props: Mapping[str, str]) -> dict[str, Any]:
    """ONNX ``metadata_props`` (all strings, Ultralytics layout) -> plain values.

    Ultralytics stores ``str(value)`` (Python literals: ``{0: 'person'}``, ``[640, 640]``, ``True``);
    edgedet's own ``edgedet`` key is JSON. Undecodable values stay strings and are judged by
    :func:`edgedet.model.parse_metadata`.
    """
    meta: dict[str, Any] = {}
    for key, value in props.items():
        decoded: Any = value
        if key == "edgedet":
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = {}
        elif key in _LITERAL_KEYS:
            try:
                decoded = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        elif key in _INT_KEYS:
            try:
                decoded = int(value)
            except ValueError:
                pass
        meta[key] = decoded
    return meta


def info_from_mapping(meta: Mapping[str, Any], path: Path, name: str) -> ModelInfo:
    """Validate decoded metadata with the TorchScript rules (same messages) and name the model."""
    raw = json.dumps(dict(meta), default=str)
    return dataclasses.replace(parse_metadata(raw, path), name=name)


def check_output(out: np.ndarray, info: ModelInfo, path: Path) -> int:
    """The dry run's output must be (1, 4 + nc, anchors); returns the anchor count."""
    expected = 4 + info.num_classes
    if out.ndim == 3 and out.shape[0] == 1 and out.shape[1] == expected:
        return int(out.shape[2])
    if out.ndim == 3 and out.shape[1] != expected:
        raise ModelError(
            f"{path}: model outputs {out.shape[1] - 4} classes but its metadata names "
            f"{info.num_classes} ({', '.join(info.names[:5])}...)"
        )
    raise ModelError(f"{path}: unexpected output shape {tuple(out.shape)} (want 1 x {expected} x N)")


def check_input_shape(shape: tuple[Any, ...], info: ModelInfo, path: Path) -> tuple[int, int, int, int]:
    """The model's declared input shape against the metadata's imgsz; symbolic dims take imgsz."""
    want = (1, 3, *info.imgsz)
    if len(shape) != 4:
        raise ModelError(f"{path}: model input has {len(shape)} dimensions (want 1 x 3 x H x W)")
    got = tuple(s if isinstance(s, int) and s > 0 else w for s, w in zip(shape, want, strict=True))
    if got != want:
        raise ModelError(
            f"{path}: model input is {'x'.join(map(str, got))} but its metadata says imgsz "
            f"{info.imgsz[0]}x{info.imgsz[1]} (want {'x'.join(map(str, want))})"
        )
    return want


def zipped_torchscript_hint(path: Path) -> str:
    return f" (it looks like a TorchScript file: use model.backend torchscript or name it {path.stem}.torchscript)"
