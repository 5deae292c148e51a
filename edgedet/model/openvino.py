"""OpenVINO detector (``model.backend: openvino``, extra ``edgedet[openvino]``), CPU only.

Loads a ``<name>_openvino_model/`` directory written by ``edgedet export --format openvino`` (or
Ultralytics' ``format=openvino``): ``<name>.xml`` + ``<name>.bin`` and a ``metadata.yaml`` sidecar.
Inference runs in fp32 (``INFERENCE_PRECISION_HINT=f32``): OpenVINO would otherwise pick bf16 on
CPUs that have it, and detections would drift from the TorchScript reference. A model exported with
``--precision bf16`` says so in its metadata and gets ``INFERENCE_PRECISION_HINT=bf16``.

The frame's preprocessing after the letterbox is compiled into the model (OpenVINO's
``PrePostProcessor``): the input is the letterboxed uint8 BGR image, ``1 x H x W x 3``
(``input_layout = "bgr_u8"``), and the model converts it to float, RGB, /255 and NCHW itself, in its
own threads. Python only resizes into the input buffer, and 4x fewer bytes cross into the runtime.
A float NCHW batch (export checks, the accuracy guard, other callers) runs through a second compiled
model of the same IR without that step, compiled on first use.

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
    InputLayout,
    ModelInfo,
    RuntimeDetector,
    check_input_shape,
    forward_error,
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


def with_preprocessing(ov: Any, model: Any) -> Any:
    """``model`` taking the letterboxed uint8 BGR image (N x H x W x 3): to f32, BGR -> RGB, /255 and
    NHWC -> NCHW inside, as ``edgedet.preprocess.Preprocessor`` does in numpy for float layouts."""
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    inp.model().set_layout(ov.Layout("NCHW"))
    inp.preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).scale(255.0)
    return ppp.build()


class OpenVinoDetector(RuntimeDetector):
    """A YOLOv8 OpenVINO IR model on the CPU; ``infer`` may be called from several threads.

    ``streams``: the worker threads that call ``infer`` at once. With one, the model is compiled
    for latency (one stream of ``threads`` threads). With more, each gets its own stream of
    ``threads`` threads (``NUM_STREAMS``): requests on one stream share its graph and run one at a
    time, so 2 workers x 1 thread on a single stream would use one core.
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", half: bool | None = None,
                 threads: int | None = None, warmup: int = 1, streams: int = 1) -> None:
        self.streams = max(1, int(streams))
        super().__init__(path, device=device, half=half, threads=threads, warmup=warmup)

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
        if self.streams > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams})
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = max(1, int(threads)) * self.streams
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
        self._core, self._xml, self._config = core, xml, config
        self._compiled = self._compile(with_preprocessing(ov, model))
        self._float: Any = None  # the model without the compiled-in preprocessing, on first float input
        self._float_lock = threading.Lock()
        self.np_dtype: type[np.floating[Any]] = np.float32
        self.input_layout: InputLayout = "bgr_u8"
        self._local = threading.local()

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{self._xml}: OpenVINO cannot compile the model: {runtime_message(exc)}") from None

    def _float_model(self) -> Any:
        with self._float_lock:
            if self._float is None:
                self._float = self._compile(self._core.read_model(str(self._xml)))
            return self._float

    def _request(self, compiled: Any) -> Any:
        requests: dict[int, Any] | None = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        return request

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """A uint8 BGR ``N x H x W x 3`` batch (the hot path), or a float NCHW RGB /255 one."""
        if batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[3] == 3:
            x, compiled = np.ascontiguousarray(batch), self._compiled
        else:
            x, compiled = np.ascontiguousarray(batch, dtype=np.float32), None
        try:
            # the input is read in place (share_inputs); the output is copied (share_outputs=False)
            out = self._request(compiled or self._float_model()).infer({0: x}, share_inputs=True)[0]
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with multi-line text
            raise forward_error(self.path, batch, self.input_shape, self._reason(exc)) from None
        return np.asarray(out, dtype=np.float32)

    def _reason(self, exc: BaseException) -> str:
        return runtime_message(exc)
