"""``edgedet export --precision bf16|int8``: build the reduced-precision model next to its output,
run it the way the daemon will (``load_detector``, which reads the precision from the metadata),
compare its detections with the fp32 eager model's on held-out frames (``guard``), and only then
move it into place with the precision, the calibration source and the agreement in its metadata.

Every candidate first goes through the fp32 conversion check of ``convert.export_backend`` (the
fp32 file must match the torch model to 0.05 px), so a guard failure means precision, not a
conversion bug.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgedet.model.base import METADATA_FILE, OPENVINO_DIR_SUFFIX
from edgedet.model.export.calibration import Frames
from edgedet.model.export.guard import Agreement, agreement, check, detections
from edgedet.model.export.precision import (
    ONNX_LADDER,
    OPENVINO_LADDER,
    Attempt,
    quantize_onnx,
    quantize_openvino,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReducedReport:
    path: Path
    precision: str
    agreement: Agreement
    method: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    warning: str | None = None

    def lines(self) -> list[str]:
        out = [f"{self.precision} model: {self.method}",
               f"agreement with fp32 (detections after NMS, IoU >= 0.5 per class): {self.agreement.line()}"]
        if len(self.attempts) > 1:
            out.append("attempts: " + "; ".join(f"{a['name']} F1 {a['f1']:.3f}" for a in self.attempts))
        if self.warning:
            out.append(f"warning: {self.warning}")
        return out


def _plain(value: Any) -> Any:
    from edgedet.model.export.convert import _plain as plain

    return plain(value)


def write_metadata(fmt: str, path: Path, metadata: dict[str, Any]) -> None:
    """Replace the metadata of the model at ``path`` (a file, or an OpenVINO directory)."""
    if fmt == "openvino":
        with (path / "metadata.yaml").open("w", encoding="utf-8") as fh:
            yaml.safe_dump(_plain(metadata), fh, sort_keys=False, allow_unicode=True)
    elif fmt == "onnx":
        import onnx

        from edgedet.model.export.convert import onnx_metadata_props

        model = onnx.load(str(path))
        del model.metadata_props[:]
        for key, value in onnx_metadata_props(metadata).items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.save(model, str(path))
    else:
        import torch

        module = torch.jit.load(str(path), map_location="cpu")
        module.save(str(path), _extra_files={METADATA_FILE: json.dumps(_plain(metadata))})


def _load(path: Path, fmt: str) -> Any:
    from edgedet.model import load_detector

    backend = {"onnx": "onnxruntime"}.get(fmt, fmt)
    return load_detector(path, backend=backend)


def _install(src: Path, output: Path) -> None:
    """Move ``src`` (file or directory) to ``output`` atomically, readable by a daemon user."""
    mask = os.umask(0)
    os.umask(mask)
    src.chmod((0o777 if src.is_dir() else 0o666) & ~mask)
    if src.is_dir():
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, old / "previous")
        os.replace(src, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        with src.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(src, output)


def export_reduced(fmt: str, precision: str, eager: Any, traced: Any, inputs: Sequence[Any],
                   metadata: dict[str, Any], output: Path, frames: Frames, names: Sequence[str],
                   min_f1: float, force: bool) -> ReducedReport:
    """Write the ``precision`` model of ``eager`` as ``fmt`` to ``output`` if it passes the guard."""
    import torch

    val = frames.val
    with torch.no_grad():
        refs = detections(lambda x: eager(torch.from_numpy(x)).float().numpy(), val.tensors, val.geometry, names)

    def score(infer: Callable[[np.ndarray], np.ndarray], subset: Sequence[int] | None = None) -> Agreement:
        idx = list(range(len(val.tensors))) if subset is None else list(subset)
        got = detections(infer, [val.tensors[i] for i in idx], [val.geometry[i] for i in idx], names)
        return agreement([refs[i] for i in idx], got)

    def judge(path: Path) -> Agreement:  # the model as the daemon feeds it (uint8 pixels for bgr_u8)
        from edgedet.preprocess import to_bgr_u8

        detector = _load(path, fmt)
        if detector.input_layout == "bgr_u8":
            return score(lambda x: detector.infer(to_bgr_u8(x)))
        return score(detector.infer)

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        meta = json.loads(json.dumps(_plain(metadata)))  # a deep copy
        ours = meta["edgedet"]
        ours.update({"precision": precision, **frames.describe()})
        candidates = _build(fmt, precision, eager, traced, inputs, meta, work, output, frames, judge, score,
                            min_f1)
        chosen = next((c for c in candidates if c[1].f1 >= min_f1), None) or max(candidates, key=lambda c: c[1].f1)
        path, result, attempt = chosen
        warning = check(result, min_f1, force, f"{precision} {fmt} model")
        ours.update({"agreement": result.as_dict(), "min_f1": min_f1, "quantization": attempt.detail,
                     "guard": "passed" if result.f1 >= min_f1 else "forced"})
        write_metadata(fmt, path, meta)
        _install(path, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if warning:
        log.warning("%s", warning)
    attempts = [{"name": a.name, "f1": r.f1} for _, r, a in candidates]
    return ReducedReport(output, precision, result, attempt.detail, attempts, warning)


def _build(fmt: str, precision: str, eager: Any, traced: Any, inputs: Sequence[Any], meta: dict[str, Any],
           work: Path, output: Path, frames: Frames, judge: Callable[[Path], Agreement],
           score: Callable[..., Agreement],
           min_f1: float) -> list[tuple[Path, Agreement, Attempt]]:
    """Candidates in order, each judged; stops at the first that passes."""
    from edgedet.model.export.convert import export_backend

    fp32_meta = {**meta, "edgedet": {**meta["edgedet"], "precision": "fp32"}}
    if fmt == "torchscript":  # bf16: the fp32 trace, run under autocast
        path = work / output.name
        traced.save(str(path), _extra_files={METADATA_FILE: json.dumps(_plain(meta))})
        return [(path, judge(path), Attempt("autocast", "fp32 TorchScript run under torch.autocast(cpu, bfloat16)"))]
    name = (output.name.removesuffix(OPENVINO_DIR_SUFFIX) or output.name) if fmt == "openvino" else output.stem
    if fmt == "openvino":
        base = work / f"{name}{OPENVINO_DIR_SUFFIX}"
        export_backend("openvino", eager, inputs, fp32_meta, base)  # checked against torch at fp32
        if precision == "bf16":
            write_metadata(fmt, base, meta)
            return [(base, judge(base), Attempt("bf16-hint", "fp32 IR compiled with INFERENCE_PRECISION_HINT=bf16"))]
        # The parts int8 leaves in float run in bf16 where the CPU has it (measured 1.65x faster than
        # f32 on an AMX box); the guard judges the model with that setting, as the daemon will run it.
        from edgedet.model.base import cpu_bf16

        meta["edgedet"]["inference_precision"] = "bf16" if cpu_bf16()[0] else "f32"
        out = []
        for level in OPENVINO_LADDER:
            path = work / f"{level}" / base.name
            shutil.copytree(base, path)
            xml = next(path.glob("*.xml"))
            calib = frames.calib.tensors if frames.calib else ()
            attempt = quantize_openvino(xml, calib, level, lambda infer, idx: score(infer, idx).f1,
                                        val_count=len(frames.val.tensors), max_drop=1.0 - min_f1)
            write_metadata(fmt, path, meta)
            out.append((path, judge(path), attempt))
            log.info("int8 %s: F1 %.3f", level, out[-1][1].f1)
            if out[-1][1].f1 >= min_f1:
                break
        return out
    # onnx int8
    fp32 = work / f"{name}.fp32.onnx"
    export_backend("onnx", eager, inputs, fp32_meta, fp32)
    out = []
    for level in ONNX_LADDER:
        path = work / f"{name}.{level}.onnx"
        attempt = quantize_onnx(fp32, path, frames.calib.tensors if frames.calib else (), level)
        write_metadata(fmt, path, meta)
        out.append((path, judge(path), attempt))
        log.info("int8 %s: F1 %.3f", level, out[-1][1].f1)
        if out[-1][1].f1 >= min_f1:
            break
    return out
