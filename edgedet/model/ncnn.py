"""ncnn detector (``model.backend: ncnn``, extra ``edgedet[ncnn]``), CPU only.

Loads a ``<name>_ncnn_model/`` directory written by ``edgedet export --format ncnn`` (or Ultralytics'
``format=ncnn``): ``model.ncnn.param`` (the graph, text) + ``model.ncnn.bin`` (fp32 weights) and
the metadata as ``metadata.yaml`` beside them, the same layout and keys as an OpenVINO directory.

Precision: fp32 unless ``model.half`` is set. ncnn itself turns fp16 storage and arithmetic on
where the CPU has them (ARMv8.2 asimdhp), so detections would drift from the TorchScript reference:
every ``use_fp16_*`` and ``use_bf16_*`` option is set off. ``model.half: true`` turns fp16 packing
and storage on (weights and blobs in fp16, arithmetic in fp32): on an emulated Cortex-A76 (the Pi
5's core, ``make arm64-check``) it stayed within 0.5 px / 0.0005 of fp32 on the demo images, while fp16
arithmetic moved boxes by 4.9 px and scores by 0.009 on the demo images, so arithmetic is never
turned on. On x86-64 (AVX-512, F16C) ``half`` gives the same output to the bit as fp32. bf16
storage is not offered: on that CPU it ran 2.6x slower and moved confident boxes by 3 px.

Threads: ``threads`` is ncnn's ``opt.num_threads`` (its OpenMP pool). One loaded ``Net`` is shared;
each call makes its own ``Extractor``, the ncnn way to run one net from several threads.
``Extractor.extract`` releases the GIL (the binding calls ``PyEval_SaveThread``; measured: two
Python threads x 1 ncnn thread ran 1.77x one thread on 2 cores), so the usual worker layouts apply
(demo model, 640, 2 cores: 1 x 2 threads 7.8 img/s at 127 ms a call, 2 x 1 10.4 img/s at 191 ms).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import ModelError
from edgedet.model.base import (
    METADATA_YAML,
    NCNN_DIR_SUFFIX,
    ModelInfo,
    RuntimeDetector,
    check_input_shape,
    read_metadata_yaml,
)

PARAM_SUFFIX = ".ncnn.param"
PARAM_MAGIC = "7767517"
MAX_PARAM_BYTES = 16 * 2**20  # a YOLOv8 graph is ~20 KiB of text; refuse a huge file before parsing it


def import_ncnn() -> Any:
    try:
        import ncnn
    except ImportError:
        raise ModelError("model.backend ncnn needs the ncnn package: pip install 'edgedet[ncnn]'") from None
    return ncnn


@dataclass(frozen=True, slots=True)
class ParamFile:
    """What the ``.param`` text says: its layer types and the Input layer's shape, if it has one."""

    layer_types: frozenset[str]
    input_shape: tuple[int, int, int, int] | None  # (1, c, h, w); pnnx and Ultralytics write none


def model_files(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """(graph .param, weights .bin, metadata.yaml) for a ``*_ncnn_model`` directory or its .param file."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: model file not found")
    if p.is_dir():
        params = sorted(p.glob(f"*{PARAM_SUFFIX}"))
        if not params:
            raise ModelError(f"{p}: no ncnn model (*{PARAM_SUFFIX}) in this directory; "
                             "export one with `edgedet export --format ncnn`")
        if len(params) > 1:
            raise ModelError(f"{p}: several ncnn models ({', '.join(x.name for x in params)}); name the .param file")
        param = params[0]
    elif p.name.endswith(".param"):
        param = p
    else:
        hint = " (it looks like a TorchScript file)" if zipfile.is_zipfile(p) else ""
        raise ModelError(
            f"{p}: not an ncnn model{hint}: want a *{NCNN_DIR_SUFFIX} directory or its {PARAM_SUFFIX} file"
        )
    weights = param.with_name(param.name.removesuffix(".param") + ".bin")
    if not weights.is_file():
        raise ModelError(f"{param}: weights file {weights.name} is missing next to it")
    return param, weights, param.parent / METADATA_YAML


def read_param(param: Path) -> ParamFile:
    """Parse the ``.param`` text (magic, counts, one layer a line) without loading ncnn."""
    try:
        size = param.stat().st_size
        if size > MAX_PARAM_BYTES:
            raise ModelError(f"{param}: {size} bytes is too large for an ncnn model graph")
        text = param.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelError(f"{param}: cannot read model file: {exc.strerror or exc}") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ModelError(f"{param}: not an ncnn model (no {PARAM_MAGIC} magic on its first line)")
    counts = lines[1].split() if len(lines) > 1 else []
    if len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise ModelError(f"{param}: not an ncnn model (line 2 must be the layer and blob counts)")
    layers = [line.split() for line in lines[2:] if line.strip()]
    if len(layers) != int(counts[0]) or any(len(f) < 4 or not (f[2].isdigit() and f[3].isdigit()) for f in layers):
        raise ModelError(
            f"{param}: not an ncnn model or truncated ({len(layers)} layer lines, the header says {counts[0]})"
        )
    shape = None
    for fields in layers:
        if fields[0] == "Input":
            values = dict(kv.split("=", 1) for kv in fields[4 + int(fields[2]) + int(fields[3]):] if "=" in kv)
            dims = tuple(values.get(k, "0") for k in ("2", "1", "0"))  # c, h, w
            if all(d.isdigit() and int(d) > 0 for d in dims):
                c, h, w = (int(d) for d in dims)
                shape = (1, c, h, w)
    return ParamFile(frozenset(f[0] for f in layers), shape)


def read_metadata(path: str | os.PathLike[str]) -> ModelInfo:
    """The model's ``metadata.yaml`` (Ultralytics layout) as ModelInfo, without loading ncnn."""
    param, _, meta_path = model_files(path)
    where = param.parent
    if not meta_path.is_file():
        raise ModelError(
            f"{where}: no model metadata ({METADATA_YAML} next to {param.name}); "
            "re-export it with `edgedet export --format ncnn`"
        )
    name = where.name.removesuffix(NCNN_DIR_SUFFIX) if where.name.endswith(NCNN_DIR_SUFFIX) else (
        param.name.removesuffix(PARAM_SUFFIX).removesuffix(".param"))
    return read_metadata_yaml(meta_path, name)


class NcnnDetector(RuntimeDetector):
    """A YOLOv8 ncnn model on the CPU; ``infer`` may be called from several threads."""

    backend = "ncnn"

    def _load(self, half: bool | None) -> None:
        ncnn = import_ncnn()
        if self.device != "cpu":
            raise ModelError(
                f"model.device {self.device}: the ncnn backend runs on cpu only (no Vulkan); use torchscript for CUDA"
            )
        param, weights, _ = model_files(self.path)
        self.info = read_metadata(self.path)
        graph = read_param(param)
        unknown = sorted(t for t in graph.layer_types if ncnn.layer_to_index(t) < 0)
        if unknown:
            raise ModelError(
                f"{param}: layers ncnn cannot run: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                "(an incomplete conversion); re-export it with `edgedet export --format ncnn`"
            )
        self.input_shape = check_input_shape(graph.input_shape or (1, 3, -1, -1), self.info, param)
        self.half = bool(half)
        self.precision = "fp16" if self.half else self.info.precision
        self.np_dtype: type[np.floating[Any]] = np.float32  # ncnn takes fp32 input and converts inside
        self.runtime = f"ncnn {ncnn.__version__}"
        net = ncnn.Net()
        opt = net.opt  # set before load_param: the layers pick their kernels while loading
        opt.use_vulkan_compute = False
        for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                     "use_bf16_packed"):
            if hasattr(opt, name):  # use_bf16_packed is newer than the oldest ncnn the extra allows
                setattr(opt, name, self.half and name in ("use_fp16_packed", "use_fp16_storage"))
        if self.threads is not None:
            opt.num_threads = max(1, int(self.threads))
        if net.load_param(str(param)) != 0:
            raise ModelError(f"{param}: ncnn cannot read the model graph")
        if net.load_model(str(weights)) != 0:  # ncnn prints its own reason on stderr first
            raise ModelError(f"{weights}: ncnn cannot read the weights (truncated, or another model's?)")
        inputs, outputs = list(net.input_names()), list(net.output_names())
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{param}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}")
        self._ncnn, self._net = ncnn, net
        self._input, self._output = inputs[0], outputs[0]

    def _run(self, batch: np.ndarray) -> Any:
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape[1:]:
            # ncnn takes any size and would run the fixed anchors of the export on it: refuse here
            raise ValueError(f"input {tuple(batch.shape)} is not N x {' x '.join(map(str, self.input_shape[1:]))}")
        outs = []
        for image in batch:  # batch 1 graph: one extraction per frame
            ex = self._net.create_extractor()
            if ex.input(self._input, self._ncnn.Mat(image)) != 0:
                raise RuntimeError(f"ncnn rejected the input blob {self._input!r}")
            code, mat = ex.extract(self._output)
            if code != 0:
                raise RuntimeError(f"ncnn extract of {self._output!r} returned {code}")
            out = np.array(mat)  # a copy: the Mat is freed with the extractor
            outs.append(out if out.ndim == 3 else out[None])
        return np.concatenate(outs)
