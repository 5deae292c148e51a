"""Reduced-precision exports (``edgedet export --precision bf16|int8``), each checked by the guard.

| format | bf16 | int8 |
|---|---|---|
| torchscript | fp32 file marked ``bf16``; the detector runs it under ``torch.autocast("cpu", bfloat16)`` | - |
| openvino | fp32 IR marked ``bf16``; compiled with ``INFERENCE_PRECISION_HINT=bf16`` | NNCF ``quantize`` |
| onnx | - (ONNX Runtime's CPU provider has no bf16 kernels) | ``onnxruntime.quantization.quantize_static`` |

int8 keeps the YOLOv8 Detect head's box decoding in float: the DFL (softmax + conv), the
anchor/stride arithmetic (Add/Sub/Mul/Div directly in the head module) and the class Sigmoid.
Those turn small activation errors into pixels and probabilities; the convolutions before them
quantize well. When that first attempt fails the guard, the ladder tries the whole head in float
and then (OpenVINO) NNCF's accuracy-aware ``quantize_with_accuracy_control`` with the guard's F1
as its metric, before giving up. Written here from the structure of the exported graph, with
Ultralytics' int8 export read only to learn which parts it keeps in float.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import EdgedetError, InputError, ModelError
from edgedet.model.base import cpu_bf16

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torchscript": ("fp32", "bf16", "fp16"),
    "openvino": ("fp32", "bf16", "int8"),
    "onnx": ("fp32", "int8"),
    "ncnn": ("fp32",),  # fp16 is a run-time option of the fp32 file (model.half)
}
# int8 attempts, in order: (name, what is kept in float).
OPENVINO_LADDER = ("head-decode", "head", "accuracy-control")
ONNX_LADDER = ("head-decode", "head")


def check_combination(fmt: str, precision: str, device: str) -> None:
    """InputError for a format x precision x device the runtimes cannot run; warns about slow ones."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision: expected one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision not in SUPPORTED[fmt]:
        hint = {"fp16": "fp16 is for TorchScript on CUDA", "bf16": "use --format openvino or torchscript",
                "int8": "use --format openvino or onnx"}[precision]
        if fmt == "ncnn" and precision == "fp16":
            hint = "an ncnn export is fp32; run it in fp16 with model.half: true"
        raise InputError(f"--precision {precision}: not available for --format {fmt} ({hint})")
    if precision in ("bf16", "int8") and device != "cpu":
        raise InputError(f"--precision {precision}: a CPU precision; --device must be cpu (got {device!r})")
    if precision == "bf16":
        native, detail = cpu_bf16()
        if not native:
            log.warning("--precision bf16: %s; the model will run, but without the speed-up (torch emulates "
                        "bf16 at about fp32 speed or slower, OpenVINO falls back to f32). Deploy it on a CPU "
                        "with AVX512_BF16 / AMX (x86) or BF16 (Arm), or use int8.", detail)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One int8 quantization attempt: what it kept in float and (after the guard) its F1."""

    name: str
    detail: str


def _head_index(names: Sequence[str]) -> str | None:
    """The Detect head's module index (``22`` in YOLOv8): the highest ``model.N`` in the graph."""
    found = [int(m.group(1)) for n in names for m in [re.search(r"model\.(\d+)/", n)] if m]
    return str(max(found)) if found else None


def head_patterns(names: Sequence[str], level: str) -> list[str]:
    """Regexes of node names kept in float for ``level`` (``head-decode`` or ``head``)."""
    head = _head_index(names)
    if head is None:
        return []
    if level == "head":
        return [rf".*model\.{head}/.*"]
    # The head's own arithmetic and the DFL; not the cv2/cv3 convolution branches.
    return [rf".*model\.{head}/dfl/.*", rf".*model\.{head}/(Add|Sub|Mul|Div|Sigmoid|Softmax)[^/]*$"]


def _matching(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return [n for n in names if any(re.fullmatch(p, n) for p in patterns)]


def _import_nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise EdgedetError("--precision int8 --format openvino needs NNCF: pip install 'edgedet[int8]'") from None
    nncf.set_log_level(logging.WARNING)  # one INFO line per node otherwise
    return nncf


RANKING_FRAMES = 20  # held-out frames NNCF's accuracy control ranks quantizers on (cost: ~100 x this)


def quantize_openvino(xml: Path, calib: Sequence[np.ndarray], level: str,
                      validate: Callable[[Callable[[np.ndarray], np.ndarray], Sequence[int]], float] | None = None,
                      val_count: int = 0, max_drop: float = 0.05) -> Attempt:
    """Quantize the fp32 IR at ``xml`` in place (its .xml/.bin are rewritten)."""
    from edgedet.model.openvino import import_openvino

    ov = import_openvino()
    nncf = _import_nncf()
    model = ov.Core().read_model(str(xml))
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    patterns = head_patterns(names, "head-decode" if level == "accuracy-control" else level)
    ignored = nncf.IgnoredScope(names=_matching(names, patterns), validate=False)
    dataset = nncf.Dataset(list(calib))
    common = {"preset": nncf.QuantizationPreset.MIXED, "subset_size": len(calib), "ignored_scope": ignored}
    if level == "accuracy-control":
        if validate is None:
            raise ModelError("accuracy-control quantization needs a validation function")

        def validation_fn(compiled: Any, indices: Any) -> tuple[float, None]:
            request = compiled.create_infer_request()
            return validate(lambda x: request.infer({0: x})[0], list(indices)), None

        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(list(range(val_count))), validation_fn, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=min(val_count, RANKING_FRAMES), num_ranking_workers=1),
            **common)
        detail = f"NNCF quantize_with_accuracy_control (max F1 drop {max_drop:g}), MIXED, head decode in float"
    else:
        quantized = nncf.quantize(model, dataset, **common)
        detail = f"NNCF quantize, MIXED preset, {len(ignored.names)} head ops in float ({level})"
    # Not over the files read_model mapped into memory (truncating a mapped .bin is a SIGBUS).
    tmp = xml.with_name(f".{xml.stem}.int8.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    del model, quantized
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp, xml)
    return Attempt(level, detail)


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over our letterboxed frames."""

    def __init__(self, name: str, tensors: Sequence[np.ndarray]) -> None:
        self._items = iter([{name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # not used by MinMax calibration
        pass


def quantize_onnx(src: Path, dst: Path, calib: Sequence[np.ndarray], level: str) -> Attempt:
    """QDQ int8 of ``src`` (fp32 ONNX) into ``dst``: Conv only, per-channel weights."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise EdgedetError("--precision int8 --format onnx needs onnx and onnxruntime: "
                           "pip install 'edgedet[export,onnx]'") from None
    model = onnx.load(str(src))
    names = [n.name for n in model.graph.node]
    input_name = model.graph.input[0].name
    exclude = _matching(names, head_patterns(names, level))
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(input_name, calib)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude)
    return Attempt(level, f"onnxruntime quantize_static, QDQ, Conv only, per-channel, {len(exclude)} head nodes "
                          f"in float ({level})")
