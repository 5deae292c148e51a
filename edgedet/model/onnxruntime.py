"""ONNX Runtime detector (``model.backend: onnxruntime``, extra ``edgedet[onnx]``).

Loads a ``.onnx`` file written by ``edgedet export --format onnx`` (or Ultralytics'
``format=onnx``, same ``metadata_props`` layout). ``InferenceSession.run`` is thread-safe and
releases the GIL, so one instance is shared by all worker threads like the TorchScript detector.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import ModelError, first_line
from edgedet.model.base import (
    ModelInfo,
    RuntimeDetector,
    check_file,
    check_input_shape,
    check_metadata_bytes,
    decode_string_props,
    info_from_mapping,
    zipped_torchscript_hint,
)

_CUDA_RE = re.compile(r"cuda(?::([0-9]+))?")
_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "model.backend onnxruntime needs the onnxruntime package: pip install 'edgedet[onnx]'"
        ) from None
    return onnxruntime


def _providers(ort: Any, device: str) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    m = _CUDA_RE.fullmatch(device)
    if m is None:
        raise ModelError(f"model.device {device}: the onnxruntime backend takes cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelError(
            f"model.device {device}: this onnxruntime has no CUDA provider "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
        )
    return [("CUDAExecutionProvider", {"device_id": int(m.group(1) or 0)}), "CPUExecutionProvider"]


class OnnxRuntimeDetector(RuntimeDetector):
    """A YOLOv8 ONNX model in ONNX Runtime, shared by worker threads (``infer`` is thread-safe)."""

    backend = "onnxruntime"

    def _load(self, half: bool | None) -> None:
        ort = _import_ort()
        check_file(self.path)
        if zipfile.is_zipfile(self.path):
            raise ModelError(f"{self.path}: not an ONNX model{zipped_torchscript_hint(self.path)}")
        threads, device = self.threads, self.device
        self.runtime = f"onnxruntime {ort.__version__}"
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = max(1, int(threads))
        providers = _providers(ort, device)
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types with long text
            raise ModelError(
                f"{self.path}: not an ONNX model or cannot load it (onnxruntime: {first_line(exc)})"
            ) from None
        self.info = read_session_metadata(self._session, self.path)
        self.precision = self.info.precision  # an int8 model is QDQ in the graph: nothing to set here
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{self.path}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}")
        self._input_name = inputs[0].name
        self.input_shape = check_input_shape(tuple(inputs[0].shape), self.info, self.path)
        dtype = _DTYPES.get(inputs[0].type)
        if dtype is None:
            raise ModelError(f"{self.path}: input type {inputs[0].type} is not supported (want float or float16)")
        self.np_dtype: type[np.floating[Any]] = dtype
        self.half = dtype is np.float16
        if half and not self.half:
            raise ModelError(
                f"{self.path}: model.half is set but this ONNX model is fp32 (half applies to TorchScript)"
            )

    def _run(self, batch: np.ndarray) -> Any:
        return self._session.run(None, {self._input_name: batch})[0]


def read_session_metadata(session: Any, path: Path) -> ModelInfo:
    props = dict(session.get_modelmeta().custom_metadata_map)
    check_metadata_bytes(sum(len(k) + len(v) for k, v in props.items()), path)
    if "names" not in props:
        raise ModelError(
            f"{path}: no model metadata (ONNX metadata_props without 'names'); "
            "re-export it with `edgedet export --format onnx`"
        )
    return info_from_mapping(decode_string_props(props), path, path.stem)


def read_metadata(path: str | os.PathLike[str]) -> ModelInfo:
    """An ONNX file's metadata (loads the model in onnxruntime, single-threaded)."""
    ort = _import_ort()
    p = Path(path)
    check_file(p)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(p), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{p}: not an ONNX model or cannot load it (onnxruntime: {first_line(exc)})") from None
    return read_session_metadata(session, p)
