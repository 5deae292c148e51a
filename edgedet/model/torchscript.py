"""TorchScript detector (``model.backend: torchscript``, the default and the reference): load,
validate, warm up, run. The only daemon module that imports torch (lazily, inside the class).
"""

from __future__ import annotations

import logging
import os
import pickletools
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import EnvironmentFault, ModelError, first_line
from edgedet.model.base import (
    METADATA_FILE,
    InputLayout,
    ModelInfo,
    check_file,
    check_metadata_bytes,
    dry_run,
    forward_error,
    parse_metadata,
)

log = logging.getLogger(__name__)


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
    check_file(path)
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a TorchScript file (not a zip archive)")
    _classify_zip(path)
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(f"extra/{METADATA_FILE}")), None)
        if name is None:
            raise ModelError(
                f"{path}: no model metadata (extra file {METADATA_FILE}); re-export it with `edgedet export`"
            )
        check_metadata_bytes(zf.getinfo(name).file_size, path)  # a zip entry may inflate to gigabytes
        return parse_metadata(zf.read(name), path)


class TorchScriptDetector:
    """A TorchScript YOLOv8 detector shared by worker threads (forward releases the GIL).

    ``threads`` sets torch's intra-op pool, which is process-wide (None: leave it as it is).
    """

    backend = "torchscript"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        half: bool | None = None,
        threads: int | None = None,
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
        if threads is not None:
            set_torch_threads(threads)
        self.runtime = f"torch {torch.__version__}"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EnvironmentFault(f"model.device {device}: CUDA is not available on this machine (yet)")
        self.device = device
        self.half = self.info.half if half is None else half
        self._torch = torch
        self._local = threading.local()
        self._dtype = torch.float16 if self.half else torch.float32
        # bf16 (``edgedet export --precision bf16``): fp32 weights run under CPU autocast, so convs and
        # matmuls take bf16 kernels (AVX512_BF16 / AMX) and the rest stays fp32.
        self.precision = self.info.precision if not self.half else "fp16"
        self._autocast = self.precision == "bf16" and device == "cpu"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
                module = torch.jit.load(str(self.path), map_location=device)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError with multi-line text
            first = first_line(exc)
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
        # nhwc: the model runs channels_last (CPU) and takes the preprocessed input without a copy.
        self.input_layout: InputLayout = "nhwc" if self._memory_format is torch.channels_last else "nchw"
        self.input_shape = (1, 3, *self.info.imgsz)
        self.np_dtype = np.float16 if self.half else np.float32
        self.anchors = dry_run(self, self.path, warmup)

    def input_buffer(self, batch: int) -> np.ndarray | None:
        """A preprocessing buffer for ``batch`` frames in pinned (page-locked) host memory on CUDA,
        so the upload in ``infer`` is a non-blocking DMA; None on a CPU (the preprocessor allocates
        its own, laid out as ``input_layout`` says)."""
        if not self.device.startswith("cuda"):
            return None
        shape = (batch, *self.input_shape[1:])
        return self._torch.empty(shape, dtype=self._dtype, pin_memory=True).numpy()

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
                if self._autocast:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        y = self._module(x)
                else:
                    y = self._module(x)
            except RuntimeError as exc:
                raise forward_error(self.path, batch, self.input_shape, first_line(exc)) from None
            if isinstance(y, (list, tuple)):
                y = y[0]
            return y.float().cpu().numpy()


def set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))
