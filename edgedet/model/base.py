"""What every detector backend shares: the ``Detector`` protocol, ``ModelInfo`` and the
Ultralytics-compatible metadata rules, and the load-time checks (file, input shape, output layout).

Imports neither torch nor any runtime: a backend module imports this one and its own runtime only.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml

from edgedet.errors import ModelError, first_line

log = logging.getLogger(__name__)

METADATA_FILE = "config.txt"
METADATA_YAML = "metadata.yaml"  # beside the model files in a *_openvino_model / *_ncnn_model directory
OPENVINO_DIR_SUFFIX = "_openvino_model"
NCNN_DIR_SUFFIX = "_ncnn_model"
InputLayout = Literal["nchw", "nhwc", "bgr_u8"]

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

    @property
    def precision(self) -> str:
        """``fp32`` | ``fp16`` | ``bf16`` | ``int8``: edgedet's ``precision`` field, else Ultralytics' args."""
        ours = self.extra.get("edgedet")
        value = ours.get("precision") if isinstance(ours, dict) else None
        if value in PRECISIONS:
            return str(value)
        args = self.extra.get("args")
        if isinstance(args, dict) and args.get("int8") is True:
            return "int8"
        return "fp16" if self.half else "fp32"


PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU, a one-line description) from /proc/cpuinfo's flags (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = {f for line in fh if line.lower().startswith(("flags", "features")) for f in line.split()}
    except OSError:
        return False, "cannot read /proc/cpuinfo to tell whether this CPU has bf16 instructions"
    have = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if have:
        return True, f"this CPU has bf16 instructions ({', '.join(have)})"
    return False, "this CPU has no bf16 instructions (no avx512_bf16 / amx_bf16 / bf16 flag)"


class Detector(Protocol):
    """Everything a caller needs from a loaded model; every backend implements all of it.

    ``infer`` takes a preprocessed batch laid out as ``input_layout`` says (``nhwc``: the
    channels-last memory of an NCHW array, used without a copy) in ``np_dtype``, and returns the
    raw head output as float32 numpy ``(batch, 4 + nc, anchors)``. ``infer`` may be called from
    several threads at once.

    ``bgr_u8``: the model does BGR -> RGB, /255 and NHWC -> NCHW itself (OpenVINO, compiled into the
    model), so the batch is the letterboxed uint8 BGR pixels, ``(batch, h, w, 3)``; ``np_dtype`` is
    then the float type the model computes from, and ``infer`` also takes a float NCHW RGB batch
    (export checks, the accuracy guard).
    """

    info: ModelInfo
    device: str
    backend: str  # torchscript | onnxruntime | openvino | ncnn
    runtime: str  # the runtime and its version, e.g. "torch 2.14.1"
    input_shape: tuple[int, int, int, int]  # (1, 3, h, w): the fixed input the model was exported for
    np_dtype: type[np.floating[Any]]  # dtype of the preprocessed batch (float32, or float16)
    input_layout: InputLayout
    anchors: int

    def input_buffer(self, batch: int) -> np.ndarray | None:
        """A preprocessing buffer for ``batch`` frames in memory the runtime uploads fastest from
        (pinned host memory on CUDA), or None: the preprocessor then allocates its own."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw head output for a preprocessed (N, 3, H, W) batch."""


# Bounds on a model's metadata: real metadata is a few KiB (1000 class names ~ 20 KiB) and a few
# hundred values. A hostile file (a YAML alias bomb, a zip entry that inflates to gigabytes) is
# refused with one line before it costs time or memory.
MAX_METADATA_BYTES = 2**20
MAX_METADATA_VALUES = 100_000


def check_metadata_bytes(size: int, path: Path) -> None:
    """Refuse metadata larger than :data:`MAX_METADATA_BYTES` before reading it."""
    if size > MAX_METADATA_BYTES:
        raise ModelError(
            f"{path}: model metadata is {size} bytes (more than {MAX_METADATA_BYTES // 1024} KiB); "
            "re-export the model"
        )


def check_metadata_size(meta: Any, path: Path) -> None:
    """Refuse decoded metadata that YAML aliases expand past :data:`MAX_METADATA_VALUES` values, or
    that refers to itself; counted with one memo per container, so in time linear in the file."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list, tuple)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ModelError(f"{path}: model metadata refers to itself (a recursive YAML alias); re-export the model")
        active.add(key)
        total = 1
        for item in (x for pair in value.items() for x in pair) if isinstance(value, dict) else value:
            total += size(item)
            if total > MAX_METADATA_VALUES:
                raise ModelError(
                    f"{path}: model metadata expands to more than {MAX_METADATA_VALUES} values "
                    "(a YAML alias bomb?); re-export the model"
                )
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(meta)
    except RecursionError:
        raise ModelError(f"{path}: model metadata is nested too deeply; re-export the model") from None


def _int_field(meta: Mapping[str, Any], key: str, default: int, path: Path) -> int:
    """A positive integer metadata value (an integral string too, as ONNX stores them)."""
    value = meta.get(key, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ModelError(f"{path}: metadata '{key}' must be a positive integer (got {shown}); re-export the model")
    return value


def _bool_field(value: Any, key: str, path: Path) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ModelError(f"{path}: metadata '{key}' must be true or false (got {value!r:.40}); re-export the model")
    return value


def parse_metadata(raw: str | bytes, path: Path) -> ModelInfo:
    """Ultralytics ``config.txt`` JSON -> ModelInfo; errors name the file."""
    check_metadata_bytes(len(raw), path)
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise ModelError(f"{path}: metadata {METADATA_FILE} is nested too deeply; re-export the model") from None
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
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
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
    torch_version = ours.get("torch")
    return ModelInfo(
        name=path.stem,
        names=names,
        imgsz=(int(imgsz[0]), int(imgsz[1])),
        stride=_int_field(meta, "stride", 32, path),
        task=task,
        batch=_int_field(meta, "batch", 1, path),
        half=_bool_field(ours.get("half", args.get("half", False)), "half", path),
        exported_torch=None if torch_version is None else str(torch_version),
        extra=meta,
    )


def check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if not path.is_file():
        raise ModelError(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror or exc}") from None


# Keys that Ultralytics writes as str(python value) into ONNX metadata_props (it eval()s them back).
_LITERAL_KEYS = frozenset({"names", "imgsz", "args", "kpt_shape", "end2end"})
_INT_KEYS = frozenset({"stride", "batch", "channels"})


def runtime_message(exc: BaseException) -> str:
    """The informative line of an OpenVINO/ONNX Runtime error (skips "Exception from file:line:")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0]


def decode_string_props(props: Mapping[str, str]) -> dict[str, Any]:
    """ONNX ``metadata_props`` (all strings, Ultralytics layout) -> plain values.

    Ultralytics stores ``str(value)`` (Python literals: ``{0: 'person'}``, ``[640, 640]``, ``True``);
    edgedet's own ``edgedet`` key is JSON. Undecodable values stay strings and are judged by
    :func:`edgedet.model.parse_metadata`.
    """
    meta: dict[str, Any] = {}
    for key, value in props.items():
        decoded: Any = value
        if key == "edgedet":
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = {}
        elif key in _LITERAL_KEYS:
            try:
                decoded = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
        elif key in _INT_KEYS:
            try:
                decoded = int(value)
            except ValueError:
                pass
        meta[key] = decoded
    return meta


def info_from_mapping(meta: Mapping[str, Any], path: Path, name: str) -> ModelInfo:
    """Validate decoded metadata with the TorchScript rules (same messages) and name the model."""
    check_metadata_size(meta, path)
    try:
        raw = json.dumps(dict(meta), default=str)
    except (ValueError, TypeError, RecursionError) as exc:  # keys JSON cannot hold, a cycle
        raise ModelError(f"{path}: model metadata cannot be read: {first_line(exc)}; re-export the model") from None
    check_metadata_bytes(len(raw), path)  # what aliases expanded to, before it is parsed again
    return dataclasses.replace(parse_metadata(raw, path), name=name)


MAX_METADATA_DEPTH = 32  # Ultralytics writes 3 levels; PyYAML slows with the square of the flow depth


class _MetadataLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses metadata nested deeper than ``MAX_METADATA_DEPTH`` as it composes."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_METADATA_DEPTH:
                raise RecursionError("model metadata nested too deeply")
            node: yaml.Node | None = super().compose_node(parent, index)
            return node
        finally:
            self.depth -= 1


def read_metadata_yaml(meta_path: Path, name: str) -> ModelInfo:
    """A model directory's ``metadata.yaml`` (Ultralytics' OpenVINO / NCNN layout) as ModelInfo named ``name``."""
    try:
        with meta_path.open("rb") as fh:
            raw = fh.read(MAX_METADATA_BYTES + 1)
        check_metadata_bytes(len(raw), meta_path)
        meta = yaml.load(raw.decode("utf-8"), Loader=_MetadataLoader)  # noqa: S506 - a safe loader
        # aliases stay shared objects here: check_metadata_size counts what they expand to
    except RecursionError:
        raise ModelError(f"{meta_path}: model metadata is nested too deeply; re-export the model") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{meta_path}: cannot read model metadata: {first_line(exc)}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: model metadata is not a mapping")
    return info_from_mapping(meta, meta_path, name)


def check_output(out: np.ndarray, info: ModelInfo, path: Path) -> int:
    """The dry run's output must be (1, 4 + nc, anchors); returns the anchor count."""
    expected = 4 + info.num_classes
    if out.ndim == 3 and out.shape[0] == 1 and out.shape[1] == expected:
        return int(out.shape[2])
    if out.ndim == 3 and out.shape[1] != expected:
        raise ModelError(
            f"{path}: model outputs {out.shape[1] - 4} classes but its metadata names "
            f"{info.num_classes} ({', '.join(info.names[:5])}...)"
        )
    raise ModelError(f"{path}: unexpected output shape {tuple(out.shape)} (want 1 x {expected} x N)")


def check_input_shape(shape: tuple[Any, ...], info: ModelInfo, path: Path) -> tuple[int, int, int, int]:
    """The model's declared input shape against the metadata's imgsz; symbolic dims take imgsz."""
    want = (1, 3, *info.imgsz)
    if len(shape) != 4:
        raise ModelError(f"{path}: model input has {len(shape)} dimensions (want 1 x 3 x H x W)")
    got = tuple(s if isinstance(s, int) and s > 0 else w for s, w in zip(shape, want, strict=True))
    if got != want:
        raise ModelError(
            f"{path}: model input is {'x'.join(map(str, got))} but its metadata says imgsz "
            f"{info.imgsz[0]}x{info.imgsz[1]} (want {'x'.join(map(str, want))})"
        )
    return want


def zipped_torchscript_hint(path: Path) -> str:
    return f" (it looks like a TorchScript file: use model.backend torchscript or name it {path.stem}.torchscript)"


def blank_input(detector: Detector, batch: int = 1) -> np.ndarray:
    """A batch of zeros in the layout and dtype ``detector.infer`` takes on the hot path."""
    _, c, h, w = detector.input_shape
    if detector.input_layout == "bgr_u8":
        return np.zeros((batch, h, w, c), dtype=np.uint8)
    return np.zeros((batch, c, h, w), dtype=detector.np_dtype)


def dry_run(detector: Detector, path: Path, warmup: int) -> int:
    """One forward on zeros to check the output layout, then ``warmup`` more; returns the anchor count."""
    zeros = blank_input(detector)
    anchors = check_output(detector.infer(zeros), detector.info, path)
    for _ in range(max(0, warmup)):
        detector.infer(zeros)
    return anchors


def forward_error(path: Path, batch: np.ndarray, expected: tuple[int, ...], reason: str) -> ModelError:
    """The one-line error for a failed forward (a wrong input shape, a runtime fault)."""
    return ModelError(f"{path}: forward failed for input {tuple(batch.shape)} (model expects {expected}): {reason}")


class RuntimeDetector:
    """Base of the backends that run the model file in a runtime of their own (ONNX Runtime,
    OpenVINO, ncnn): the load options, a fixed NCHW input, the dry run and the one-line forward error.

    A subclass sets ``backend`` and implements ``_load`` (sets ``info``, ``runtime``,
    ``input_shape``, ``np_dtype``, ``half``) and ``_run`` (one forward on a contiguous batch).
    """

    backend: str
    runtime: str
    info: ModelInfo
    input_shape: tuple[int, int, int, int]
    np_dtype: type[np.floating[Any]]
    half: bool
    input_layout: InputLayout = "nchw"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        half: bool | None = None,
        threads: int | None = None,
        warmup: int = 1,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self._load(half)
        self.anchors = dry_run(self, self.path, warmup)
        log.debug("loaded %s with %s (%s threads)", self.path, self.runtime, threads or "default")

    def _load(self, half: bool | None) -> None:
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> Any:
        raise NotImplementedError

    def _reason(self, exc: BaseException) -> str:
        """The informative line of a runtime's error."""
        return first_line(exc)

    def input_buffer(self, batch: int) -> np.ndarray | None:
        return None  # the runtime copies the input into its own memory

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.np_dtype)
        try:
            out = self._run(x)
        except Exception as exc:  # noqa: BLE001 - runtimes raise their own exception types with long text
            raise forward_error(self.path, batch, self.input_shape, self._reason(exc)) from None
        return np.asarray(out, dtype=np.float32)
