"""The model stage: detector backends behind one ``Detector`` protocol (``base.py``).

Each backend lives in its own module, imports only ``base`` and its own runtime, and is imported
only when configured, so a daemon configured for one backend never imports another:

| backend | module | model file | extra |
|---|---|---|---|
| ``torchscript`` (default, the reference) | ``torchscript.py`` | ``*.torchscript`` | (core) |
| ``onnxruntime`` | ``onnxruntime.py`` | ``*.onnx`` | ``edgedet[onnx]`` |
| ``openvino`` | ``openvino.py`` | ``*_openvino_model/`` or its ``.xml`` | ``edgedet[openvino]`` |
| ``ncnn`` | ``ncnn.py`` | ``*_ncnn_model/`` or its ``.ncnn.param`` | ``edgedet[ncnn]`` |

``load_detector`` is the factory; ``model.backend: auto`` picks by the model path with
:func:`resolve_backend`. ``export/`` writes these files from an Ultralytics checkpoint. This
module imports no runtime.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, get_args

from edgedet.errors import ModelError
from edgedet.model.base import NCNN_DIR_SUFFIX, OPENVINO_DIR_SUFFIX, Detector

BackendName = Literal["torchscript", "onnxruntime", "openvino", "ncnn"]
BackendChoice = Literal["auto", "torchscript", "onnxruntime", "openvino", "ncnn"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

__all__ = ["BACKENDS", "BackendChoice", "BackendName", "load_detector", "resolve_backend", "torch_version"]


def resolve_backend(path: str | os.PathLike[str], backend: str = "auto") -> BackendName:
    """The backend for ``path``: ``backend`` itself unless it is ``auto``, else by the path.

    ``auto``: a ``.onnx`` file -> onnxruntime; a ``.xml`` file, a directory named
    ``*_openvino_model`` or a directory holding a ``.xml`` -> openvino; a ``.ncnn.param`` file, a
    directory named ``*_ncnn_model`` or a directory holding a ``.ncnn.param`` -> ncnn; anything else
    (``.torchscript`` included) -> torchscript, whose loader explains what a wrong file is.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ModelError(f"model.backend: expected auto or one of {', '.join(BACKENDS)} (got {backend!r})")
        return backend  # type: ignore[return-value]  # checked against the Literal's values above
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix == ".xml" or p.name.endswith(OPENVINO_DIR_SUFFIX):
        return "openvino"
    if p.name.lower().endswith(".ncnn.param") or p.name.endswith(NCNN_DIR_SUFFIX):
        return "ncnn"
    if p.is_dir() and any(p.glob("*.xml")):
        return "openvino"
    if p.is_dir() and any(p.glob("*.ncnn.param")):
        return "ncnn"
    return "torchscript"


def load_detector(
    path: str | os.PathLike[str],
    device: str = "cpu",
    half: bool | None = None,
    backend: str = "auto",
    threads: int | None = None,
    workers: int = 1,
) -> Detector:
    """Load ``path`` with ``backend`` (``auto``: by the path, see :func:`resolve_backend`).

    Only the chosen backend's runtime is imported. ``threads``: ONNX Runtime's intra-op /
    OpenVINO's inference threads / ncnn's ``opt.num_threads`` / torch's process-wide intra-op pool
    (None: the runtime's default), per calling worker thread. ``workers``: how many threads will
    call ``infer`` at once (OpenVINO gives each its own stream; the other runtimes need nothing).
    """
    kind = resolve_backend(path, backend)
    if kind == "onnxruntime":
        from edgedet.model.onnxruntime import OnnxRuntimeDetector

        return OnnxRuntimeDetector(path, device=device, half=half, threads=threads)
    if kind == "openvino":
        from edgedet.model.openvino import OpenVinoDetector

        return OpenVinoDetector(path, device=device, half=half, threads=threads, streams=workers)
    if kind == "ncnn":
        from edgedet.model.ncnn import NcnnDetector

        return NcnnDetector(path, device=device, half=half, threads=threads)
    from edgedet.model.torchscript import TorchScriptDetector

    return TorchScriptDetector(path, device=device, half=half, threads=threads)


def torch_version() -> str:
    """torch's version if this process imported it (other backends never do), else "not loaded"."""
    torch = sys.modules.get("torch")
    return str(torch.__version__) if torch is not None else "not loaded"
