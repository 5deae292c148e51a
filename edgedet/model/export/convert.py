"""``edgedet export --format onnx|openvino|ncnn``: write the traced model's fused module as ONNX,
OpenVINO IR or ncnn with the same metadata, then check it against the eager model before it
replaces anything. Called from ``edgedet.model.export.trace`` (which imports torch and Ultralytics);
this module imports torch, onnx, openvino and ncnn lazily inside its functions.

Layouts follow Ultralytics' own exports so files load in both tools:

- ONNX: ``metadata_props`` with ``str(value)`` per key (``names`` -> ``{0: 'person', ...}``,
  ``imgsz`` -> ``[640, 640]``, ``stride``, ``task``, ``batch``, ``args``, ...); edgedet's own
  fields as JSON under ``edgedet``. Fixed input ``images`` 1x3xHxW, output ``output0``, opset 17.
- OpenVINO: ``<name>_openvino_model/<name>.xml`` + ``.bin`` (fp32 weights), converted from that
  ONNX graph by OpenVINO's ONNX frontend, and the metadata as ``metadata.yaml`` beside them.
- ncnn: ``<name>_ncnn_model/model.ncnn.param`` + ``model.ncnn.bin`` (fp32 weights) and the same
  ``metadata.yaml``: the module traced to TorchScript at the fixed input shape, converted by the
  ``pnnx`` binary that the ``pnnx`` wheel ships (nothing is downloaded); pnnx's side files (its own
  graph, Python and ONNX copies) stay in a scratch directory that is removed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgedet.errors import EdgedetError, InputError, ModelError
from edgedet.model.base import METADATA_YAML, NCNN_DIR_SUFFIX, OPENVINO_DIR_SUFFIX

ONNX_OPSET = 17
# Exported runtime vs the fused eager torch model, fp32 on CPU. Observed on the demo model: ONNX
# Runtime 1.8e-3 px / 9e-7, OpenVINO (f32) 3.8e-3 px / 1e-6, ncnn (fp32) 1.8e-3 px / 1e-6 (different
# conv kernels sum in another order). The limits leave ~10x headroom and stay 20x/100x inside the
# detection parity tolerance (1 px, 0.01): a larger diff means a conversion bug, not rounding.
BOX_TOLERANCE_PX = 0.05
SCORE_TOLERANCE = 1e-4


NCNN_FILES = ("model.ncnn.param", "model.ncnn.bin")  # Ultralytics' names, so its loader reads ours too
PNNX_TIMEOUT_S = 600.0


def default_output(weights: Path, fmt: str) -> Path:
    if fmt == "onnx":
        return weights.with_suffix(".onnx")
    return weights.with_name(f"{weights.stem}{NCNN_DIR_SUFFIX if fmt == 'ncnn' else OPENVINO_DIR_SUFFIX}")


def ncnn_tools() -> Path:
    """The pnnx converter binary of the installed ``pnnx`` wheel, after checking that the ncnn runtime
    (which checks the export) is installed too; InputError naming the extra otherwise."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("edgedet export --format ncnn needs the pnnx converter: pip install 'edgedet[export]'")
    exe = Path(next(iter(spec.submodule_search_locations))) / ("pnnx.exe" if os.name == "nt" else "pnnx")
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise InputError(f"edgedet export --format ncnn: the pnnx package has no converter binary ({exe} is "
                         "missing); reinstall it: pip install --force-reinstall 'edgedet[export]'")
    if importlib.util.find_spec("ncnn") is None:
        raise InputError("edgedet export --format ncnn checks the model with ncnn: pip install 'edgedet[ncnn]'")
    return exe


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


def _with_input_shape(param: str, shape: tuple[int, int, int]) -> str:
    """The ``.param`` text with ``0=w 1=h 2=c`` on its Input layer (pnnx writes none): the loader
    checks it against the metadata's imgsz, since ncnn itself runs any input size on the export's
    fixed anchors."""
    c, h, w = shape
    lines = param.splitlines()
    for i, line in enumerate(lines):
        fields = line.split()
        if fields and fields[0] == "Input" and len(fields) == 4 + int(fields[2]) + int(fields[3]):
            lines[i] = f"{line} 0={w} 1={h} 2={c}"
    return "\n".join(lines) + "\n"


def _write_ncnn(module: Any, example: Any, metadata: dict[str, Any], directory: Path) -> None:
    import torch

    exe = ncnn_tools()
    _, c, h, w = (int(v) for v in example.shape)
    with tempfile.TemporaryDirectory(prefix="edgedet-pnnx-") as scratch:
        work = Path(scratch)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace deprecation + tracer warnings
            module(example)  # the Detect head caches its anchors for this shape: traced as constants
            # (else the trace computes them with aten::meshgrid, which pnnx leaves unconverted)
            torch.jit.trace(module, example, strict=False, check_trace=False).save(str(work / "model.pt"))
        outputs = {"ncnnparam": NCNN_FILES[0], "ncnnbin": NCNN_FILES[1], "ncnnpy": "model_ncnn.py",
                   "pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
                   "pnnxonnx": "model.pnnx.onnx"}
        cmd = [str(exe), str(work / "model.pt"), f"inputshape=[1,{c},{h},{w}]f32", "fp16=0", "device=cpu",
               *(f"{key}={work / name}" for key, name in outputs.items())]
        try:
            proc = subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=PNNX_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ModelError(f"ncnn conversion: pnnx did not finish within {PNNX_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise ModelError(f"ncnn conversion: cannot run {exe}: {exc.strerror or exc}") from None
        param, weights = work / NCNN_FILES[0], work / NCNN_FILES[1]
        if proc.returncode != 0 or not (param.is_file() and weights.is_file()):
            said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()] or [
                ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
            raise ModelError(f"ncnn conversion failed: pnnx exited {proc.returncode}"
                             + (f": {said[-1][:200]}" if said else " without output"))
        (directory / NCNN_FILES[0]).write_text(_with_input_shape(param.read_text(), (c, h, w)))
        shutil.move(str(weights), directory / NCNN_FILES[1])
    with (directory / METADATA_YAML).open("w", encoding="utf-8") as fh:
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
    if fmt == "ncnn":
        from edgedet.model.ncnn import NcnnDetector

        return NcnnDetector(path, warmup=0)
    from edgedet.model.openvino import OpenVinoDetector

    return OpenVinoDetector(path, warmup=0)


def compare(detector: Any, references: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Max abs diff (box rows in px, score rows) of ``detector`` vs reference outputs; a ``bgr_u8``
    model is checked on its uint8 input too (its compiled-in preprocessing)."""
    from edgedet.preprocess import to_bgr_u8

    box = score = 0.0
    for x, ref in references:
        inputs = [x] + ([to_bgr_u8(x)] if detector.input_layout == "bgr_u8" else [])
        for got in (detector.infer(v) for v in inputs):
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

    if fmt not in ("onnx", "openvino", "ncnn"):
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
        if fmt == "ncnn":
            _write_ncnn(module, example, metadata, tmp_dir)
            detector = _load(fmt, tmp_dir)
        else:
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
