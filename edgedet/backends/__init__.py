"""Optional inference backends behind the ``Detector`` protocol (see ``edgedet.model``).

TorchScript (``edgedet.model.TorchScriptDetector``) is the default and the reference. The others
live in their own modules and import their runtime only when loaded, so a daemon configured for
one backend never imports another:

| backend | module | model file | extra |
|---|---|---|---|
| ``torchscript`` | ``edgedet.model`` | ``*.torchscript`` | (core) |
| ``onnxruntime`` | ``edgedet.backends.onnxruntime`` | ``*.onnx`` | ``edgedet[onnx]`` |
| ``openvino`` | ``edgedet.backends.openvino`` | ``*_openvino_model/`` or its ``.xml`` | ``edgedet[openvino]`` |

``model.backend: auto`` picks by the model path with :func:`resolve_backend`. This module imports
no runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from edgedet.errors import ModelError

BackendName = Literal["torchscript", "onnxruntime", "openvino"]
BackendChoice = Literal["auto", "torchscript", "onnxruntime", "openvino"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
OPENVINO_DIR_SUFFIX = "_openvino_model"

__all__ = ["BACKENDS", "OPENVINO_DIR_SUFFIX", "BackendChoice", "BackendName", "resolve_backend"]


def resolve_backend(path: str | os.PathLike[str], backend: str = "auto") -> BackendName:
    """The backend for ``path``: ``backend`` itself unless it is ``auto``, else by the path.

    ``auto``: a ``.onnx`` file -> onnxruntime; a ``.xml`` file, a directory named
    ``*_openvino_model`` or a directory holding a ``.xml`` -> openvino; anything else
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
    if p.is_dir() and any(p.glob("*.xml")):
        return "openvino"
    return "torchscript"
