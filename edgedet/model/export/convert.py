"""``edgedet export --format onnx|openvino``: write the traced model's fused module as ONNX or
OpenVINO IR with the same metadata, then check it against the eager model before it replaces
anything. Called from ``edgedet.model.export.trace`` (which imports torch and Ultralytics); this module imports
torch, onnx and openvino lazily inside its functions.

Layouts follow Ultralytics' own exports so files load in both tools:

- ONNX: ``metadata_props`` with ``str(value)`` per key (``names`` -> ``{0: 'person', ...}``,
  ``imgsz`` -> ``[640, 640]``, ``stride``, ``task``, ``batch``, ``args``, ...); edgedet's own
  fields as JSON under ``edgedet``. Fixed input ``images`` 1x3xHxW, output ``output0``, opset 17.
- OpenVINO: ``<name>_openvino_model/<name>.xml`` + ``.bin`` (fp32 weights), converted from that
  ONNX graph by OpenVINO's ONNX frontend, and the metadata as ``metadata.yaml`` beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgedet.errors import EdgedetError, ModelError
from edgedet.model.base import OPENVINO_DIR_SUFFIX

ONNX_OPSET = 17
# Exported runtime vs the fused eager torch model, fp32 on CPU. Observed on the demo model: ONNX
# Runtime 1.8e-3 px / 9e-7, OpenVINO (f32) 3.8e-3 px / 1e-6 (different conv kernels sum in another
# order). The limits leave ~10x headroom and stay 20x/100x inside the detection parity tolerance
# (1 px, 0.01): a larger diff means a conversion bug, not rounding.
BOX_TOLERANCE_PX = 0.05
SCORE_TOLERANCE = 1e-4


def default_output(weights: Path, fmt: str) -> Path:
    if fmt == "onnx":
        return weights.with_suffix(".onnx")
    return weights.with_name(f"{weights.stem}{OPENVINO_DIR_SUFFIX}")


def _plain(value: Any) -> Any:
    """Metadata as plain YAML/JSON types (torch.__version__ is a str subclass; keep int keys)."""
    if isinstance(value, dict):
        return {k if isinstance(k, int) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _umask_mode(base: int) -> int:
    """``base`` less the process umask: what a plain open()/mkdir() would have given."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def onnx_metadata_props(metadata: dict[str, Any]) -> dict[str, str]:
    """Ultralytics' layout: ``str(value)`` per key; our ``edgedet`` section as JSON."""
    return {k: json.dumps(_plain(v)) if k == "edgedet" else str(_plain(v)) for k, v in metadata.items()}


def _torch_to_onnx(module: Any, example: Any, path: Path) -> None:
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-based exporter deprecation + tracer warnings
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,  # the TorchScript-based exporter: no onnxscript dependency, Ultralytics' choice
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["output0"],
                do_constant_folding=True,
            )
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises many types with long text
        text = str(exc).strip().splitlines()
        raise ModelError(f"ONNX export failed: {text[0] if text else type(exc).__name__}") from None


def _write_onnx(module: Any, example: Any, metadata: dict[str, Any], path: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise EdgedetError(
            "edgedet export --format onnx needs the onnx package: pip install 'edgedet[export]'"
        ) from None
    _torch_to_onnx(module, example, path)
    model = onnx.load(str(path))
    for key, value in onnx_metadata_props(metadata).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_openvino(module: Any, example: Any, metadata: dict[str, Any], directory: Path, name: str) -> None:
    from edgedet.model.openvino import import_openvino

    try:
        ov = import_openvino()
    except ModelError:
        raise EdgedetError(
            "edgedet export --format openvino needs the openvino package: pip install 'edgedet[openvino]'"
        ) from None
    onnx_path = directory / f"{name}.onnx"
    _torch_to_onnx(module, example, onnx_path)
    try:
        # Core.read_model runs the same ONNX frontend as ov.convert_model, without the model
        # converter's telemetry (background sender threads that try to reach the internet).
        ov_model = ov.Core().read_model(str(onnx_path))
        ov.save_model(ov_model, str(directory / f"{name}.xml"), compress_to_fp16=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"OpenVINO conversion failed: {str(exc).strip().splitlines()[0]}") from None
    onnx_path.unlink()
    with (directory / "metadata.yaml").open("w", encoding="utf-8") as fh:
        yaml.safe_dump(_plain(metadata), fh, sort_keys=False, allow_unicode=True)


def _load(fmt: str, path: Path) -> Any:
    if fmt == "onnx":
        from edgedet.model.onnxruntime import OnnxRuntimeDetector

        try:
            return OnnxRuntimeDetector(path, warmup=0)
        except ModelError as exc:
            if "needs the onnxruntime package" in str(exc):
                raise EdgedetError(
                    "edgedet export --format onnx checks the file with onnxruntime: pip install 'edgedet[onnx]'"
                ) from None
            raise
    from edgedet.model.openvino import OpenVinoDetector

    return OpenVinoDetector(path, warmup=0)


def compare(detector: Any, references: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Max abs diff (box rows in px, score rows) of ``detector`` vs reference outputs."""
    box = score = 0.0
    for x, ref in references:
        got = detector.infer(x)
        if got.shape != ref.shape:
            raise ModelError(f"exported model output {got.shape} differs from the torch model's {ref.shape}")
        box = max(box, float(np.abs(got[:, :4] - ref[:, :4]).max()))
        score = max(score, float(np.abs(got[:, 4:] - ref[:, 4:]).max()))
    return box, score


def export_backend(
    fmt: str,
    module: Any,
    inputs: Sequence[Any],
    metadata: dict[str, Any],
    output: Path,
) -> tuple[float, float, str]:
    """Write ``module`` (the fused, wrapped eager model, fp32) as ``fmt`` to ``output``; return the
    max box / score diff against it over ``inputs`` (torch tensors, the first is the example) and
    the runtime used for the check. Nothing replaces ``output`` unless the check passes."""
    import torch

    if fmt not in ("onnx", "openvino"):
        raise ModelError(f"unknown export format {fmt!r}")
    with torch.no_grad():
        references = [(x.float().cpu().numpy(), module(x).float().cpu().numpy()) for x in inputs]
    example = inputs[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _write_onnx(module, example, metadata, tmp)
            detector = _load(fmt, tmp)
            box, score = compare(detector, references)
            _check_limits(fmt, box, score)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            tmp.chmod(_umask_mode(0o666))  # mkstemp makes 0600: the daemon may run as another user
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return box, score, str(detector.runtime)
    name = output.name.removesuffix(OPENVINO_DIR_SUFFIX) or output.name
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        _write_openvino(module, example, metadata, tmp_dir, name)
        detector = _load(fmt, tmp_dir / f"{name}.xml")
        box, score = compare(detector, references)
        _check_limits(fmt, box, score)
        tmp_dir.chmod(_umask_mode(0o777))  # mkdtemp makes 0700
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, old / "previous")
        os.replace(tmp_dir, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return box, score, str(detector.runtime)


def _check_limits(fmt: str, box: float, score: float) -> None:
    if box > BOX_TOLERANCE_PX or score > SCORE_TOLERANCE:
        raise ModelError(
            f"{fmt} model differs from the torch model by {box:.3g} px / {score:.3g} in score "
            f"(limits {BOX_TOLERANCE_PX} px / {SCORE_TOLERANCE}): the conversion is not faithful"
        )
