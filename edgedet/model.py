"""TorchScript detector: load, validate, warm up, run. The only daemon module that imports torch.

A ``Detector`` takes a preprocessed NCHW numpy batch and returns the raw head output as numpy
``(batch, 4 + nc, anchors)``; pre/post-processing live in ``preprocess.py`` / ``postprocess.py``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickletools
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgedet.errors import ModelError

log = logging.getLogger(__name__)

METADATA_FILE = "config.txt"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model file says about itself (Ultralytics-compatible metadata)."""

    name: str
    names: tuple[str, ...]
    imgsz: tuple[int, int]  # (h, w) of the fixed input
    stride: int
    task: str
    batch: int
    half: bool
    exported_torch: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)


class Detector(Protocol):
    info: ModelInfo
    device: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(1, 3, h, w): the fixed input the model was exported for."""

    @property
    def np_dtype(self) -> type[np.floating[Any]]:
        """dtype the preprocessed batch should have (float32, or float16 for half models)."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw head output for a preprocessed (N, 3, H, W) batch."""


def parse_metadata(raw: str | bytes, path: Path) -> ModelInfo:
    """Ultralytics ``config.txt`` JSON -> ModelInfo; errors name the file."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ModelError(
            f"{path}: metadata {METADATA_FILE} is not valid JSON; re-export with `edgedet export`"
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: metadata {METADATA_FILE} is not a JSON object")

    def field_(key: str) -> Any:
        value = meta.get(key)
        if isinstance(value, str) and key in {"imgsz", "names"}:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        return value

    names_raw = field_("names")
    if isinstance(names_raw, dict):
        try:
            pairs = sorted((int(k), str(v)) for k, v in names_raw.items())
        except ValueError:
            raise ModelError(f"{path}: metadata 'names' keys must be class indices") from None
        if [k for k, _ in pairs] != list(range(len(pairs))):
            raise ModelError(f"{path}: metadata 'names' must number classes 0..{len(pairs) - 1}")
        names = tuple(v for _, v in pairs)
    elif isinstance(names_raw, list) and all(isinstance(v, str) for v in names_raw):
        names = tuple(names_raw)
    else:
        raise ModelError(f"{path}: metadata has no class 'names'; re-export with `edgedet export`")
    if not names:
        raise ModelError(f"{path}: metadata 'names' is empty")

    imgsz = field_("imgsz")
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if not (isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(isinstance(v, int) and v > 0 for v in imgsz)):
        raise ModelError(f"{path}: metadata 'imgsz' must be [h, w] (got {imgsz!r})")
    task = str(meta.get("task", "detect"))
    if task != "detect":
        raise ModelError(f"{path}: task is {task!r}; edgedet runs detection models only")
    if meta.get("end2end") or (isinstance(meta.get("args"), dict) and meta["args"].get("nms")):
        raise ModelError(f"{path}: exported with NMS inside the model; export without nms (edgedet does NMS itself)")
    ours: dict[str, Any] = meta["edgedet"] if isinstance(meta.get("edgedet"), dict) else {}
    args: dict[str, Any] = meta["args"] if isinstance(meta.get("args"), dict) else {}
    return ModelInfo(
        name=path.stem,
        names=names,
        imgsz=(int(imgsz[0]), int(imgsz[1])),
        stride=int(meta.get("stride", 32)),
        task=task,
        batch=int(meta.get("batch", 1)),
        half=bool(ours.get("half", args.get("half", False))),
        exported_torch=ours.get("torch"),
        extra=meta,
    )


def _classify_zip(path: Path) -> None:
    """Raise a helpful ModelError when a zip is a torch.save checkpoint rather than TorchScript."""
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.namelist()
            if any(n.split("/", 1)[-1].startswith("code/") for n in entries):
                return  # looks like TorchScript
            pkl = next((n for n in entries if n.endswith("data.pkl")), None)
            if pkl is None:
                raise ModelError(f"{path}: not a TorchScript file (a zip without TorchScript code)")
            data = zf.read(pkl)
    except zipfile.BadZipFile:
        raise ModelError(f"{path}: not a TorchScript file (corrupt zip archive)") from None
    globals_ = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in {"GLOBAL", "STACK_GLOBAL"} or isinstance(arg, str):
                globals_.add(str(arg))
    except Exception:  # noqa: BLE001 - a broken pickle is still "not TorchScript"
        pass
    if any("ultralytics" in g for g in globals_):
        raise ModelError(
            f"{path}: this is an Ultralytics checkpoint, not a TorchScript model: "
            f"export it first with `edgedet export --weights {path}`"
        )
    raise ModelError(
        f"{path}: this is a PyTorch checkpoint/state_dict (torch.save), not a TorchScript model: "
        "export it first with `edgedet export`"
    )


def read_metadata(path: str | os.PathLike[str]) -> ModelInfo:
    """Read and validate a model file's metadata without loading torch."""
    path = Path(path)
    _check_file(path)
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a TorchScript file (not a zip archive)")
    _classify_zip(path)
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(f"extra/{METADATA_FILE}")), None)
        if name is None:
            raise ModelError(
                f"{path}: no model metadata (extra file {METADATA_FILE}); re-export it with `edgedet export`"
            )
        return parse_metadata(zf.read(name), path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if not path.is_file():
        raise ModelError(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror or exc}") from None


class TorchScriptDetector:
    """A TorchScript YOLOv8 detector shared by worker threads (forward releases the GIL)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        half: bool | None = None,
        warmup: int = 1,
        channels_last: bool = True,
    ) -> None:
        self.path = Path(path)
        self.info = read_metadata(self.path)  # bad files are reported before the slow torch import
        import torch

        if self.info.exported_torch and self.info.exported_torch != torch.__version__:
            log.info(
                "model %s was exported with torch %s; running with torch %s",
                self.path,
                self.info.exported_torch,
                torch.__version__,
            )
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"model.device {device}: CUDA is not available on this machine")
        self.device = device
        self.half = self.info.half if half is None else half
        self._torch = torch
        self._local = threading.local()
        self._dtype = torch.float16 if self.half else torch.float32
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
                module = torch.jit.load(str(self.path), map_location=device)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ""
            if self.info.exported_torch and self.info.exported_torch != torch.__version__:
                hint = (
                    f" (exported with torch {self.info.exported_torch}, running torch {torch.__version__}: "
                    "re-export it with `edgedet export` on this machine)"
                )
            raise ModelError(f"{self.path}: cannot load TorchScript model: {first}{hint}") from None
        module = module.eval().to(dtype=self._dtype)
        self._memory_format = torch.channels_last if channels_last and device == "cpu" else torch.contiguous_format
        if self._memory_format is torch.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self.input_shape = (1, 3, *self.info.imgsz)
        self.np_dtype = np.float16 if self.half else np.float32
        out = self.infer(np.zeros(self.input_shape, dtype=self.np_dtype))  # dry run: layout check
        expected = 4 + self.info.num_classes
        if out.ndim != 3 or out.shape[0] != 1 or out.shape[1] != expected:
            if out.ndim == 3 and out.shape[1] != expected:
                raise ModelError(
                    f"{self.path}: model outputs {out.shape[1] - 4} classes but its metadata names "
                    f"{self.info.num_classes} ({', '.join(self.info.names[:5])}...)"
                )
            raise ModelError(f"{self.path}: unexpected output shape {tuple(out.shape)} (want 1 x {expected} x N)")
        self.anchors = int(out.shape[2])
        for _ in range(max(0, warmup)):
            self.infer(np.zeros(self.input_shape, dtype=self.np_dtype))

    def input_buffer(self, batch: int) -> np.ndarray | None:
        """A preprocessing buffer for ``batch`` frames in pinned (page-locked) host memory on CUDA,
        so the upload in ``infer`` is a non-blocking DMA; None on a CPU (the preprocessor allocates
        its own, laid out as ``input_layout`` says)."""
        if not self.device.startswith("cuda"):
            return None
        shape = (batch, *self.input_shape[1:])
        return self._torch.empty(shape, dtype=self._dtype, pin_memory=True).numpy()

    @property
    def input_layout(self) -> str:
        """``nhwc`` when the model runs channels_last (CPU): the input is then used without a copy."""
        return "nhwc" if self._memory_format is self._torch.channels_last else "nchw"

    def _stream(self) -> Any:
        """One CUDA stream per calling thread, so worker threads overlap on the GPU."""
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self._torch.cuda.Stream(device=self.device)
        return stream

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self.device.startswith("cuda"):
            with torch.cuda.stream(self._stream()):
                return self._infer(batch)
        return self._infer(batch)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device != "cpu":
                x = x.to(self.device, non_blocking=True)
            x = x.to(dtype=self._dtype, memory_format=self._memory_format)
            try:
                y = self._module(x)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
                raise ModelError(
                    f"{self.path}: forward failed for input {tuple(batch.shape)} "
                    f"(model expects {self.input_shape}): {first}"
                ) from None
            if isinstance(y, (list, tuple)):
                y = y[0]
            return y.float().cpu().numpy()


def torch_version() -> str:
    import torch

    return str(torch.__version__)


def set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def load_detector(
    path: str | os.PathLike[str],
    device: str = "cpu",
    half: bool | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> Detector:
    """Load ``path`` with ``backend`` (``auto``: by the path, see ``edgedet.backends.resolve_backend``).

    Only the chosen backend's runtime is imported. ``threads`` sets ONNX Runtime's intra-op /
    OpenVINO's inference threads; TorchScript uses the process-wide ``set_torch_threads``.
    """
    from edgedet.backends import resolve_backend

    kind = resolve_backend(path, backend)
    if kind == "onnxruntime":
        from edgedet.backends.onnxruntime import OnnxRuntimeDetector

        return OnnxRuntimeDetector(path, device=device, half=half, threads=threads)
    if kind == "openvino":
        from edgedet.backends.openvino import OpenVinoDetector

        return OpenVinoDetector(path, device=device, half=half, threads=threads)
    return TorchScriptDetector(path, device=device, half=half)
