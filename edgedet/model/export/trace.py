"""``edgedet export``: Ultralytics YOLOv8 checkpoint -> TorchScript file with metadata.

Ultralytics is imported here only, lazily (the optional ``export`` extra). The file layout matches
Ultralytics' own ``format=torchscript`` export: JSON metadata in the extra file ``config.txt``
(stride, task, batch, imgsz, names, ...), so files load in both tools. edgedet's own fields live
under the ``"edgedet"`` key.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedet import __version__
from edgedet.errors import EdgedetError, InputError, ModelError
from edgedet.model.base import METADATA_FILE

log = logging.getLogger(__name__)


FP32_TOLERANCE = 1e-4
# fp16 vs fp32 eager: scores are probabilities, boxes are pixels at the model's input size.
FP16_SCORE_TOLERANCE = 0.02
FP16_BOX_TOLERANCE_PX = 4.0  # fp16 spacing is 0.5 px between 512 and 1024


@dataclass(frozen=True, slots=True)
class ExportReport:
    path: Path
    input_shape: tuple[int, int, int, int]
    trace_max_abs_diff: float  # traced vs the eager (fused) module it was traced from
    unfused_box_diff_px: float  # traced vs the unfused checkpoint, box rows
    unfused_score_diff: float  # traced vs the unfused checkpoint, class-score rows
    half: bool
    names: dict[int, str]
    format: str = "torchscript"
    backend_box_diff_px: float | None = None  # onnx/openvino runtime vs the eager (fused) module
    backend_score_diff: float | None = None
    backend_runtime: str | None = None
    precision: str = "fp32"
    extra_lines: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        backend: list[str] = []
        if self.backend_box_diff_px is not None:
            from edgedet.model.export.convert import BOX_TOLERANCE_PX, SCORE_TOLERANCE

            backend = [
                f"{self.backend_runtime} vs eager (fused): boxes {self.backend_box_diff_px:.3g} px, "
                f"scores {self.backend_score_diff:.3g} (limits {BOX_TOLERANCE_PX} px / {SCORE_TOLERANCE})"
            ]
        return [
            f"exported {self.path} (input {'x'.join(map(str, self.input_shape))}, "
            f"{'fp16' if self.half else self.precision}, {len(self.names)} classes)",
            f"traced vs eager (fused) max abs diff: {self.trace_max_abs_diff:.3g}",
            f"traced vs unfused checkpoint: boxes {self.unfused_box_diff_px:.3g} px, "
            f"scores {self.unfused_score_diff:.3g} "
            + ("(fp16 vs fp32 rounding)" if self.half else "(expected float rounding from folding conv+bn)"),
        ] + backend + list(self.extra_lines)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_imgsz(text: str) -> tuple[int, int]:
    """``640`` -> (640, 640); ``384,640`` -> (h, w)."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--imgsz: expected N or H,W (got {text!r})") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise InputError(f"--imgsz: expected N or H,W with positive sizes (got {text!r})")
    return values[0], values[1]


def rect_imgsz(long_side: int, aspect: str, stride: int = 32) -> tuple[int, int]:
    """Input (h, w) for frames of aspect ``W:H`` (e.g. ``16:9``): long side ``long_side``, the
    short side the letterboxed size rounded up to a multiple of ``stride`` (16:9 at 640 -> 384x640)."""
    try:
        aw, ah = (float(v) for v in aspect.split(":"))
    except ValueError:
        raise InputError(f"--rect: expected W:H such as 16:9 (got {aspect!r})") from None
    if aw <= 0 or ah <= 0:
        raise InputError(f"--rect: expected positive W:H (got {aspect!r})")
    if long_side % stride:
        raise InputError(f"--imgsz {long_side}: must be a multiple of the model stride {stride}")
    short = math.ceil(long_side * min(aw, ah) / max(aw, ah) / stride) * stride
    return (short, long_side) if aw >= ah else (long_side, short)


def _import_ultralytics() -> Any:
    try:
        import ultralytics  # noqa: F401  (lazy, optional extra)
        from ultralytics import YOLO
    except ImportError:
        raise EdgedetError(
            "edgedet export needs Ultralytics to read .pt checkpoints: pip install 'edgedet[export]'"
        ) from None
    return YOLO


class _FirstOutput:
    """Wraps a YOLO model so the traced graph returns only the prediction tensor."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = self.inner(x)
                return out[0] if isinstance(out, (list, tuple)) else out

        return Wrapper(model).eval()


def _real_image(ultra_module: Any, check_image: Path | None) -> np.ndarray | None:
    import cv2

    candidates = [check_image] if check_image else []
    candidates.append(Path(ultra_module.__file__).parent / "assets" / "bus.jpg")
    for path in candidates:
        if path is not None and path.is_file():
            image = cv2.imread(str(path))
            if image is not None:
                return image
    return None


@dataclass(frozen=True, slots=True)
class ReducedOptions:
    """``--calib`` / ``--val`` / ``--min-f1`` / ``--force`` for a bf16 or int8 export."""

    calib: str | None = None
    val: str | None = None
    calib_frames: int = 300
    val_frames: int = 60
    min_f1: float = 0.95
    force: bool = False
    stream_seconds: float = 60.0


def _export_reduced(fmt: str, precision: str, weights: Path, output: Path | None, eager: Any, traced: Any,
                    inputs: list[Any], metadata: dict[str, Any], names: dict[int, str], opts: ReducedOptions,
                    ultra_module: Any, check_image: Path | None, fp32: ExportReport) -> ExportReport:
    import cv2

    from edgedet.model.export.calibration import gather
    from edgedet.model.export.convert import default_output
    from edgedet.model.export.reduced import export_reduced

    if precision == "int8" and opts.calib is None:
        raise InputError("--precision int8 needs --calib: a folder of images, a video or a stream URL "
                         "from your cameras")
    if not 0 < opts.min_f1 <= 1:
        raise InputError(f"--min-f1: expected a value in (0, 1] (got {opts.min_f1:g})")
    fallback = []
    if opts.calib is None and opts.val is None:
        assets = Path(ultra_module.__file__).parent / "assets"
        paths = [check_image] if check_image else []
        paths += [assets / "bus.jpg", assets / "zidane.jpg"]
        fallback = [im for p in paths if p is not None and p.is_file() for im in [cv2.imread(str(p))] if im is not None]
        log.warning("no --val or --calib frames: the accuracy guard checks %d sample image(s) only; "
                    "give --val with frames from your cameras", len(fallback))
    h, w = metadata["imgsz"]
    frames = gather((h, w), opts.calib, opts.val, opts.calib_frames, opts.val_frames, fallback, opts.stream_seconds)
    if fmt == "torchscript":
        output = Path(output) if output else weights.with_suffix(".torchscript")
    else:
        output = Path(output) if output else default_output(weights, fmt)
    result = export_reduced(fmt, precision, eager, traced, inputs, metadata, output, frames,
                            [names[i] for i in sorted(names)], opts.min_f1, opts.force)
    import dataclasses

    return dataclasses.replace(fp32, path=output, precision=precision, extra_lines=tuple(result.lines()))


def export(
    weights: Path,
    output: Path | None = None,
    imgsz: tuple[int, int] = (640, 640),
    half: bool = False,
    device: str = "cpu",
    check_image: Path | None = None,
    format: str = "torchscript",
    precision: str | None = None,
    reduced: ReducedOptions | None = None,
) -> ExportReport:
    """Trace ``weights`` and write a TorchScript file atomically (``format="onnx"|"openvino"|"ncnn"``:
    the same fused module and metadata as ONNX / OpenVINO IR / ncnn, see ``edgedet.model.export.convert``).
    Raises EdgedetError subclasses."""
    weights = Path(weights)
    if format not in ("torchscript", "onnx", "openvino", "ncnn"):
        raise InputError(f"--format: expected torchscript, onnx, openvino or ncnn (got {format!r})")
    precision = precision or ("fp16" if half else "fp32")
    from edgedet.model.export.precision import check_combination

    check_combination(format, precision, device)
    half = precision == "fp16"
    if half and format != "torchscript":
        raise InputError(f"--half: {format} exports are fp32 (fp16 is for TorchScript on CUDA)")
    if format == "ncnn":
        from edgedet.model.export.convert import ncnn_tools

        ncnn_tools()  # before the slow part: a missing converter or runtime is reported at once
    if not weights.is_file():
        raise InputError(f"--weights: file not found: {weights}")
    if not os.access(weights, os.R_OK):
        raise InputError(f"--weights: cannot read {weights}: permission denied")
    YOLO = _import_ultralytics()
    import torch
    import ultralytics

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available in this torch build / machine")
    if half and not device.startswith("cuda"):
        log.warning("--half on %s: fp16 convolutions on a CPU are slow; use it to test, not to deploy", device)

    try:
        yolo = YOLO(str(weights))
    except Exception as exc:  # noqa: BLE001 - ultralytics raises many types for bad files
        raise ModelError(f"{weights}: not a loadable Ultralytics checkpoint ({exc})") from None
    if getattr(yolo, "task", None) != "detect":
        raise ModelError(f"{weights}: task is {getattr(yolo, 'task', None)!r}; edgedet exports detect models")
    raw = yolo.model
    names = {int(k): str(v) for k, v in dict(raw.names).items()}
    stride = int(max(raw.stride))
    h, w = imgsz
    if h % stride or w % stride:
        raise InputError(f"--imgsz {h},{w}: each side must be a multiple of the model stride {stride}")
    dtype = torch.float16 if half else torch.float32

    import copy

    unfused = copy.deepcopy(raw).to(device).float().eval()
    fused = copy.deepcopy(raw).to(device).float().eval()
    for p in list(unfused.parameters()) + list(fused.parameters()):
        p.requires_grad_(False)
    fused = fused.fuse()
    eager = _FirstOutput.wrap(fused).to(device=device, dtype=dtype)
    example = torch.zeros((1, 3, h, w), device=device, dtype=dtype)

    inputs = [example]
    image = _real_image(ultralytics, check_image)
    if image is not None:
        from edgedet.preprocess import Preprocessor

        tensor, _ = Preprocessor(h, w)(image)
        inputs.append(torch.from_numpy(tensor.copy()).to(device=device, dtype=dtype))
    else:
        log.warning("no real image found for the export check; comparing on the example input only")

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace deprecation notice
        traced = torch.jit.trace(eager, example, strict=False, check_trace=False)
        trace_diff = 0.0
        box_diff = 0.0
        score_diff = 0.0
        for x in inputs:
            ref = eager(x).float()
            got = traced(x).float()
            trace_diff = max(trace_diff, float((ref - got).abs().max()))
            base = _FirstOutput.wrap(unfused)(x.float()).float()
            box_diff = max(box_diff, float((base[:, :4] - got[:, :4]).abs().max()))
            score_diff = max(score_diff, float((base[:, 4:] - got[:, 4:]).abs().max()))
    out = traced(example)
    if out.ndim != 3 or out.shape[1] != 4 + len(names):
        raise ModelError(f"{weights}: unexpected output shape {tuple(out.shape)} (want 1 x {4 + len(names)} x N)")
    if not half and trace_diff >= FP32_TOLERANCE:
        raise ModelError(
            f"traced model differs from the eager model by {trace_diff:.3g} (limit {FP32_TOLERANCE}): "
            "tracing did not capture the model faithfully"
        )
    if half and (score_diff > FP16_SCORE_TOLERANCE or box_diff > FP16_BOX_TOLERANCE_PX):
        raise ModelError(
            f"fp16 model differs from fp32 by {box_diff:.3g} px / {score_diff:.3g} in score "
            f"(limits {FP16_BOX_TOLERANCE_PX} px / {FP16_SCORE_TOLERANCE})"
        )

    now = _dt.datetime.now(_dt.timezone.utc).astimezone()
    metadata: dict[str, Any] = {
        "description": f"edgedet {format} export of {weights.name}",
        "author": "edgedet",
        "date": now.isoformat(),
        "version": ultralytics.__version__,
        "stride": stride,
        "task": "detect",
        "batch": 1,
        "imgsz": [h, w],
        "names": names,
        "args": {"batch": 1, "half": half, "dynamic": False, "nms": False, "imgsz": [h, w]},
        "channels": 3,
        "end2end": False,
        "edgedet": {
            "version": __version__,
            "torch": torch.__version__,
            "source": weights.name,
            "source_sha256": sha256_file(weights),
            "exported_at": now.isoformat(),
            "device": device,
            "half": half,
            "input_shape": [1, 3, h, w],
            "trace_max_abs_diff": trace_diff,
            "format": format,
            "precision": precision,
        },
    }
    if precision in ("bf16", "int8"):
        return _export_reduced(format, precision, weights, output, eager, traced, inputs, metadata, names,
                               reduced or ReducedOptions(), ultralytics, check_image,
                               ExportReport(path=Path(), input_shape=(1, 3, h, w), trace_max_abs_diff=trace_diff,
                                            unfused_box_diff_px=box_diff, unfused_score_diff=score_diff, half=False,
                                            names=names, format=format))
    if format != "torchscript":
        from edgedet.model.export.convert import default_output, export_backend

        output = Path(output) if output else default_output(weights, format)
        b_box, b_score, runtime = export_backend(format, eager, inputs, metadata, output)
        return ExportReport(
            path=output, input_shape=(1, 3, h, w), trace_max_abs_diff=trace_diff, unfused_box_diff_px=box_diff,
            unfused_score_diff=score_diff, half=half, names=names, format=format,
            backend_box_diff_px=b_box, backend_score_diff=b_score, backend_runtime=runtime,
        )
    output = Path(output) if output else weights.with_suffix(".torchscript")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        traced.save(tmp_name, _extra_files={METADATA_FILE: json.dumps(metadata)})
        with open(tmp_name, "rb") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; a daemon user must be able to read it
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return ExportReport(
        path=output,
        input_shape=(1, 3, h, w),
        trace_max_abs_diff=trace_diff,
        unfused_box_diff_px=box_diff,
        unfused_score_diff=score_diff,
        half=half,
        names=names,
    )
