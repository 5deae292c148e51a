"""OpenVINO detector (``model.backend: openvino``, extra ``edgedet[openvino]``), CPU only.

Loads a ``<name>_openvino_model/`` directory written by ``edgedet export --format openvino`` (or
Ultralytics' ``format=openvino``): ``<name>.xml`` + ``<name>.bin`` and a ``metadata.yaml`` sidecar.
Inference runs in fp32 (``INFERENCE_PRECISION_HINT=f32``): OpenVINO would otherwise pick bf16 on
CPUs that have it, and detections would drift from the TorchScript reference. A model exported with
``--precision bf16`` says so in its metadata and gets ``INFERENCE_PRECISION_HINT=bf16``.

One compiled model is shared; each calling thread gets its own ``InferRequest`` (an InferRequest
is not safe to use from two threads at once). ``InferRequest.infer`` releases the GIL.
"""

from __future__ import annotations

import os
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import ModelError
from edgedet.model.base import (
    METADATA_YAML,
    OPENVINO_DIR_SUFFIX,
    ModelInfo,
    RuntimeDetector,
    check_input_shape,
    read_metadata_yaml,
    runtime_message,
)


def import_openvino() -> Any:
    """``import openvino`` with its usage telemetry off.

    ``import openvino`` imports the model converter, which sends a usage event to Intel's analytics
    from a background thread unless the user opted out (openvino-telemetry, on by default). An edge
    daemon must not phone home, so the telemetry package is hidden from the import: OpenVINO then
    uses its own no-op stub (the fallback it ships for when openvino-telemetry is not installed).
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: import fails
    try:
        import openvino
    except ImportError:
        raise ModelError("model.backend openvino needs the openvino package: pip install 'edgedet[openvino]'") from None
    return openvino


def model_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(model .xml, metadata.yaml) for a ``*_openvino_model`` directory or the .xml inside it."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: model file not found")
    if p.is_dir():
        xmls = sorted(p.glob("*.xml"))
        if not xmls:
            raise ModelError(
                f"{p}: no OpenVINO model (.xml) in this directory; export one with `edgedet export --format openvino`"
            )
        if len(xmls) > 1:
            raise ModelError(f"{p}: several OpenVINO models ({', '.join(x.name for x in xmls)}); name the .xml file")
        xml = xmls[0]
    elif p.suffix.lower() != ".xml":
        hint = " (it looks like a TorchScript file)" if zipfile.is_zipfile(p) else ""
        raise ModelError(
            f"{p}: not an OpenVINO model{hint}: want a *{OPENVINO_DIR_SUFFIX} directory or its .xml file"
        )
    else:
        xml = p
    try:
        with xml.open("rb") as fh:
            head = fh.read(512).lstrip()
    except OSError as exc:
        raise ModelError(f"{xml}: cannot read model file: {exc.strerror or exc}") from None
    if not (head.startswith(b"<?xml") or head.startswith(b"<net")):
        raise ModelError(f"{xml}: not an OpenVINO model (not an IR .xml file)")
    if not xml.with_suffix(".bin").is_file():
        raise ModelError(f"{xml}: weights file {xml.with_suffix('.bin').name} is missing next to it")
    return xml, xml.parent / METADATA_YAML


def read_metadata(path: str | os.PathLike[str]) -> ModelInfo:
    """The model's ``metadata.yaml`` (Ultralytics layout) as ModelInfo, without loading OpenVINO."""
    xml, meta_path = model_files(path)
    where = xml.parent
    if not meta_path.is_file():
        raise ModelError(
            f"{where}: no model metadata ({METADATA_YAML} next to {xml.name}); "
            "re-export it with `edgedet export --format openvino`"
        )
    name = where.name.removesuffix(OPENVINO_DIR_SUFFIX) if where.name.endswith(OPENVINO_DIR_SUFFIX) else xml.stem
    return read_metadata_yaml(meta_path, name)


class OpenVinoDetector(RuntimeDetector):
    """A YOLOv8 OpenVINO IR model on the CPU; ``infer`` may be called from several threads."""

    backend = "openvino"

    def _load(self, half: bool | None) -> None:
        ov = import_openvino()
        threads, device = self.threads, self.device
        if device != "cpu":
            raise ModelError(f"model.device {device}: the openvino backend runs on cpu only; use torchscript for CUDA")
        if half:
            raise ModelError(f"{self.path}: model.half is not supported by the openvino backend (it runs fp32)")
        xml, _ = model_files(self.path)
        self.info = read_metadata(self.path)
        self.half = False
        self.runtime = f"openvino {ov.__version__.split('-')[0]}"
        # f32 unless the model says bf16 (`edgedet export --precision bf16`): OpenVINO would otherwise
        # pick bf16 by itself on CPUs that have it. An int8 model keeps its float parts in f32.
        self.precision = self.info.precision
        ours = self.info.extra.get("edgedet")
        rest = ours.get("inference_precision") if isinstance(ours, dict) else None  # an int8 model's float parts
        hint = "bf16" if self.precision == "bf16" or rest == "bf16" else "f32"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = max(1, int(threads))
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with multi-line text
            raise ModelError(
                f"{xml}: not an OpenVINO model or cannot read it (openvino: {runtime_message(exc)})"
            ) from None
        if len(model.inputs) != 1 or not model.outputs:
            raise ModelError(
                f"{xml}: expected 1 input and 1 output, found {len(model.inputs)} and {len(model.outputs)}"
            )
        pshape = model.inputs[0].get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else -1 for d in pshape) if pshape.rank.is_static else ()
        self.input_shape = check_input_shape(dims, self.info, xml)
        try:
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{xml}: OpenVINO cannot compile the model: {runtime_message(exc)}") from None
        self.np_dtype: type[np.floating[Any]] = np.float32
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def _run(self, batch: np.ndarray) -> Any:
        return self._request().infer({0: batch})[0]  # copies the outputs (share_outputs=False)

    def _reason(self, exc: BaseException) -> str:
        return runtime_message(exc)
