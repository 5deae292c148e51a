"""Backend selection, metadata layout, and the ONNX Runtime / OpenVINO detectors on a tiny
hand-built model (input 1x3x8x8 reshaped to a 1x6x32 "head": 4 box rows + 2 classes, 32 anchors).

Backend tests skip when their runtime is not installed; the real demo model is exercised in
tests/integration/test_backends.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgedet.config import parse_config
from edgedet.errors import ConfigError, ModelError
from edgedet.model import resolve_backend
from edgedet.model.base import decode_string_props, info_from_mapping
from edgedet.model.export.convert import onnx_metadata_props
from tests.paths import DEMO_MODEL, REPO

HAS_ONNX = importlib.util.find_spec("onnx") is not None
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
needs_ort = pytest.mark.skipif(
    not (HAS_ONNX and HAS_ORT), reason="onnxruntime not installed (pip install 'edgedet[onnx]')"
)
needs_ov = pytest.mark.skipif(
    not (HAS_ONNX and HAS_OV), reason="openvino not installed (pip install 'edgedet[openvino]')"
)

SHAPE = (1, 3, 8, 8)
OUT = (1, 6, 32)


def metadata(**overrides: Any) -> dict[str, Any]:
    """Metadata as edgedet export writes it (Ultralytics keys + our section)."""
    meta: dict[str, Any] = {
        "description": "tiny test model",
        "stride": 8,
        "task": "detect",
        "batch": 1,
        "imgsz": [8, 8],
        "names": {0: "person", 1: "car"},
        "args": {"batch": 1, "half": False, "dynamic": False, "nms": False, "imgsz": [8, 8]},
        "channels": 3,
        "end2end": False,
        "edgedet": {"version": "test", "torch": "2.0", "half": False, "format": "onnx"},
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def write_onnx(path: Path, meta: dict[str, Any] | None, in_hw: tuple[int, int] = (8, 8)) -> Path:
    """A valid ONNX graph: images (1,3,H,W) -> Reshape -> output0 (1, 6, 3*H*W/6)."""
    import onnx
    from onnx import TensorProto, helper

    h, w = in_hw
    out_shape = [1, 6, 3 * h * w // 6]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["output0"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        [helper.make_tensor("shape", TensorProto.INT64, [3], out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in onnx_metadata_props(meta or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_openvino(directory: Path, meta: dict[str, Any] | None, name: str = "tiny") -> Path:
    from edgedet.model.openvino import import_openvino

    ov = import_openvino()  # telemetry off: a plain `import openvino` starts a sender thread

    directory.mkdir(parents=True)
    onnx_path = write_onnx(directory.parent / f"{name}-src.onnx", None)
    # read_model, not convert_model: the converter starts telemetry threads (see backends/exporting.py)
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(directory / f"{name}.xml"), compress_to_fp16=False)
    if meta is not None:
        (directory / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return directory


def expected(x: np.ndarray) -> np.ndarray:
    return x.reshape(OUT).astype(np.float32)


def load_error(load: Callable[[Path], Any], path: Path) -> str:
    """The ModelError that ``load(path)`` raises, checked to be one line."""
    with pytest.raises(ModelError) as info:
        load(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def check_cpu_only(load: Callable[..., Any], model: Path, backend: str) -> None:
    """CUDA is refused in one line, and so is a batch of the wrong size (1x3x4x4 for an 8x8 model)."""
    with pytest.raises(ModelError, match=f"model.device cuda: the {backend} backend runs on cpu only"):
        load(model, device="cuda")
    with pytest.raises(ModelError, match=r"forward failed for input \(1, 3, 4, 4\) \(model expects \(1, 3, 8, 8\)\): "):
        load(model).infer(np.zeros((1, 3, 4, 4), np.float32))


def run_threads(detector: Any, n_threads: int = 4, calls: int = 25) -> list[str]:
    """Call ``infer`` from several threads at once with distinct inputs; return any mismatches."""
    errors: list[str] = []
    start = threading.Barrier(n_threads)

    def work(k: int) -> None:
        rng = np.random.default_rng(k)
        start.wait(timeout=10)
        for i in range(calls):
            x = rng.random(SHAPE, dtype=np.float32)
            got = detector.infer(x)
            if not np.array_equal(got, expected(x)):
                errors.append(f"thread {k} call {i}: wrong output")

    threads = [threading.Thread(target=work, args=(k,), name=f"infer:{k}") for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return errors


# --------------------------------------------------------------------------- backend selection


@pytest.mark.parametrize(
    ("path", "backend", "want"),
    [
        ("m.torchscript", "auto", "torchscript"),
        ("m.pt", "auto", "torchscript"),  # the TorchScript loader explains what a .pt is
        ("m.onnx", "auto", "onnxruntime"),
        ("M.ONNX", "auto", "onnxruntime"),
        ("m.xml", "auto", "openvino"),
        ("demo_openvino_model", "auto", "openvino"),
        ("demo_openvino_model/", "auto", "openvino"),
        ("m.onnx", "torchscript", "torchscript"),  # explicit wins over the path
        ("m.torchscript", "onnxruntime", "onnxruntime"),
        ("m.torchscript", "openvino", "openvino"),
    ],
)
def test_resolve_backend(path: str, backend: str, want: str) -> None:
    assert resolve_backend(path, backend) == want


def test_resolve_backend_directory_with_xml(tmp_path: Path) -> None:
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "m.xml").write_text("<net/>")
    (tmp_path / "empty").mkdir()
    assert resolve_backend(tmp_path / "ir") == "openvino"
    assert resolve_backend(tmp_path / "empty") == "torchscript"


def test_resolve_backend_rejects_unknown() -> None:
    with pytest.raises(ModelError, match=r"model.backend: expected auto or one of .*\(got 'tensorrt'\)"):
        resolve_backend("m.onnx", "tensorrt")


# --------------------------------------------------------------------------- metadata layout


def test_onnx_props_use_ultralytics_layout() -> None:
    props = onnx_metadata_props(metadata())
    assert props["names"] == "{0: 'person', 1: 'car'}"  # str(dict), what Ultralytics eval()s back
    assert props["imgsz"] == "[8, 8]" and props["stride"] == "8" and props["batch"] == "1"
    assert props["task"] == "detect"
    assert json.loads(props["edgedet"])["format"] == "onnx"
    assert all(isinstance(v, str) for v in props.values())


def test_onnx_props_round_trip_to_model_info() -> None:
    meta = decode_string_props(onnx_metadata_props(metadata()))
    info = info_from_mapping(meta, Path("x/tiny.onnx"), "tiny")
    assert (info.name, info.names, info.imgsz, info.stride, info.batch, info.half) == (
        "tiny", ("person", "car"), (8, 8), 8, 1, False
    )
    assert info.exported_torch == "2.0" and info.extra["edgedet"]["format"] == "onnx"


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (metadata(names=None), "metadata has no class 'names'"),
        (metadata(imgsz="[8]"), "metadata 'imgsz' must be [h, w]"),
        (metadata(task="segment"), "task is 'segment'; edgedet runs detection models only"),
        (metadata(args={"nms": True}), "exported with NMS inside the model"),
    ],
)
def test_bad_metadata_same_messages_as_torchscript(meta: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError) as info:
        info_from_mapping(decode_string_props(onnx_metadata_props(meta)), Path("m.onnx"), "m")
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- config


CAMERA = "cameras:\n  gate:\n    url: rtsp://cam.local/stream\n"


@pytest.mark.parametrize("backend", ["auto", "torchscript", "onnxruntime", "openvino", "ncnn"])
def test_config_backend_values(tmp_path: Path, backend: str) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    cfg = parse_config(CAMERA + f"model:\n  path: m.onnx\n  backend: {backend}\n", "c.yaml", tmp_path)
    assert cfg.model.backend == backend


def test_config_backend_default_and_errors(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert parse_config(CAMERA + "model:\n  path: m.onnx\n", "c.yaml", tmp_path).model.backend == "auto"
    with pytest.raises(ConfigError) as info:
        parse_config(CAMERA + "model:\n  path: m.onnx\n  backend: tensorrt\n", "c.yaml", tmp_path)
    assert "c.yaml:6: model.backend: expected one of 'auto', 'torchscript', 'onnxruntime', 'openvino', 'ncnn'" in str(
        info.value
    )
    with pytest.raises(ConfigError, match="model.device: the openvino backend runs on cpu only"):
        parse_config(CAMERA + "model:\n  path: m.onnx\n  backend: openvino\n  device: cuda\n", "c.yaml", tmp_path)
    with pytest.raises(ConfigError, match="model.device: the ncnn backend runs on cpu only"):
        parse_config(CAMERA + "model:\n  path: m.onnx\n  backend: ncnn\n  device: cuda\n", "c.yaml", tmp_path)


def test_config_accepts_openvino_model_directory(tmp_path: Path) -> None:
    ir = tmp_path / "demo_openvino_model"
    ir.mkdir()
    (ir / "demo.xml").write_text("<net/>")
    cfg = parse_config(CAMERA + "model:\n  path: demo_openvino_model\n", "c.yaml", tmp_path)
    assert cfg.model.path == str(ir)
    (tmp_path / "no_model").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        parse_config(CAMERA + "model:\n  path: no_model\n", "c.yaml", tmp_path)


def test_config_ncnn_model_directory_and_half_on_the_cpu(tmp_path: Path) -> None:
    """An ncnn directory by path (auto); model.half on the CPU is ncnn's fp16, an error for the others."""
    exported = tmp_path / "demo_ncnn_model"
    exported.mkdir()
    (exported / "model.ncnn.param").write_text("7767517\n")
    cfg = parse_config(CAMERA + "model:\n  path: demo_ncnn_model\n  half: true\n", "c.yaml", tmp_path)
    assert (cfg.model.path, cfg.model.half) == (str(exported), True)
    with pytest.raises(ConfigError, match="model.device: the ncnn backend runs on cpu only"):
        parse_config(CAMERA + "model:\n  path: demo_ncnn_model\n  device: cuda\n", "c.yaml", tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="model.half: half precision needs a CUDA device"):
        parse_config(CAMERA + "model:\n  path: m.onnx\n  half: true\n", "c.yaml", tmp_path)


# --------------------------------------------------------------------------- lazy imports


ISOLATION = """
import json, sys, threading
from edgedet.model import load_detector
det = load_detector(sys.argv[1])
loaded = {m: m in sys.modules for m in ("torch", "onnxruntime", "openvino", "ncnn")}
print(json.dumps(loaded | {"cls": type(det).__name__, "threads": [t.name for t in threading.enumerate()]}))
"""


def _loaded_modules(model: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", ISOLATION, str(model)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("kind", "cls", "imported"),
    [
        pytest.param("torchscript", "TorchScriptDetector", "torch", marks=pytest.mark.skipif(
            not DEMO_MODEL.is_file(), reason="demo model missing: run `make model`")),
        pytest.param("onnx", "OnnxRuntimeDetector", "onnxruntime", marks=needs_ort),
        pytest.param("openvino", "OpenVinoDetector", "openvino", marks=needs_ov),
        pytest.param("ncnn", "NcnnDetector", "ncnn", marks=pytest.mark.skipif(
            importlib.util.find_spec("ncnn") is None, reason="ncnn not installed (pip install 'edgedet[ncnn]')")),
    ],
)
def test_loading_imports_only_the_configured_backend(tmp_path: Path, kind: str, cls: str, imported: str) -> None:
    """A daemon never imports a backend it was not configured for; none starts Python threads
    (OpenVINO's telemetry sender would: see backends/openvino.py import_openvino)."""
    if kind == "torchscript":
        model = DEMO_MODEL
    elif kind == "onnx":
        model = write_onnx(tmp_path / "tiny.onnx", metadata())
    elif kind == "ncnn":
        from tests.unit.test_ncnn_backend import write_ncnn

        model = write_ncnn(tmp_path / "tiny_ncnn_model", metadata())
    else:
        model = write_openvino(tmp_path / "tiny_openvino_model", metadata())
    loaded = _loaded_modules(model)
    want = {m: m == imported for m in ("torch", "onnxruntime", "openvino", "ncnn")}
    assert loaded == want | {"cls": cls, "threads": ["MainThread"]}


# --------------------------------------------------------------------------- ONNX Runtime


@needs_ort
def test_onnxruntime_detector_loads_and_infers(tmp_path: Path) -> None:
    from edgedet.model.onnxruntime import OnnxRuntimeDetector, read_metadata

    path = write_onnx(tmp_path / "tiny.onnx", metadata())
    det = OnnxRuntimeDetector(path, threads=1)
    assert (det.info.name, det.info.names, det.info.imgsz) == ("tiny", ("person", "car"), (8, 8))
    assert det.input_shape == SHAPE and det.np_dtype is np.float32 and det.anchors == 32
    assert (det.device, det.threads, det.backend) == ("cpu", 1, "onnxruntime")
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    out = det.infer(x)
    assert out.dtype == np.float32 and np.array_equal(out, expected(x))
    assert read_metadata(path) == det.info


@needs_ort
def test_onnxruntime_infer_is_thread_safe(tmp_path: Path) -> None:
    from edgedet.model.onnxruntime import OnnxRuntimeDetector

    det = OnnxRuntimeDetector(write_onnx(tmp_path / "tiny.onnx", metadata()), threads=1)
    assert run_threads(det) == []


def _onnx_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model\n" * 10)
    zipped = tmp_path / "zipped.onnx"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("m/code/m.py", "pass")
    return {
        "missing": (tmp_path / "nope.onnx", "nope.onnx: model file not found"),
        "directory": (tmp_path, "not a regular file"),
        "junk": (junk, "junk.onnx: not an ONNX model or cannot load it (onnxruntime: "),
        "torchscript": (zipped, "zipped.onnx: not an ONNX model (it looks like a TorchScript file"),
        "no metadata": (write_onnx(tmp_path / "bare.onnx", None), "bare.onnx: no model metadata (ONNX metadata_props"),
        "class count": (
            write_onnx(tmp_path / "three.onnx", metadata(names={0: "a", 1: "b", 2: "c"})),
            "three.onnx: model outputs 2 classes but its metadata names 3 (a, b, c...)",
        ),
        "imgsz": (
            write_onnx(tmp_path / "size.onnx", metadata(imgsz=[16, 16])),
            "size.onnx: model input is 1x3x8x8 but its metadata says imgsz 16x16",
        ),
    }


@needs_ort
@pytest.mark.parametrize("case", ["missing", "directory", "junk", "torchscript", "no metadata", "class count", "imgsz"])
def test_onnxruntime_bad_files_one_line_errors(tmp_path: Path, case: str) -> None:
    from edgedet.model.onnxruntime import OnnxRuntimeDetector

    path, message = _onnx_cases(tmp_path)[case]
    assert message in load_error(OnnxRuntimeDetector, path)


@needs_ort
def test_onnxruntime_wrong_input_and_device(tmp_path: Path) -> None:
    from edgedet.model.onnxruntime import OnnxRuntimeDetector

    path = write_onnx(tmp_path / "tiny.onnx", metadata())
    det = OnnxRuntimeDetector(path)
    with pytest.raises(ModelError, match=r"forward failed for input \(1, 3, 4, 4\) \(model expects \(1, 3, 8, 8\)\)"):
        det.infer(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ModelError, match="model.device cuda: this onnxruntime has no CUDA provider"):
        OnnxRuntimeDetector(path, device="cuda")
    with pytest.raises(ModelError, match="model.half is set but this ONNX model is fp32"):
        OnnxRuntimeDetector(path, half=True)


# --------------------------------------------------------------------------- OpenVINO


@needs_ov
@pytest.mark.parametrize("target", ["directory", "xml"])
def test_openvino_detector_loads_and_infers(tmp_path: Path, target: str) -> None:
    from edgedet.model.openvino import OpenVinoDetector

    ir = write_openvino(tmp_path / "tiny_openvino_model", metadata())
    det = OpenVinoDetector(ir if target == "directory" else ir / "tiny.xml", threads=1)
    assert (det.info.name, det.info.names, det.input_shape, det.anchors) == ("tiny", ("person", "car"), SHAPE, 32)
    assert det.np_dtype is np.float32 and det.backend == "openvino" and det.threads == 1
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    assert np.array_equal(det.infer(x), expected(x))


@needs_ov
def test_openvino_takes_uint8_bgr_pixels(tmp_path: Path) -> None:
    """The hot path: letterboxed uint8 BGR pixels; the model does RGB, /255 and NCHW inside, giving
    what the float NCHW input of the same pixels gives."""
    from edgedet.model.openvino import OpenVinoDetector
    from edgedet.preprocess import Preprocessor

    det = OpenVinoDetector(write_openvino(tmp_path / "tiny_openvino_model", metadata()), threads=1)
    assert det.input_layout == "bgr_u8"
    image = np.random.default_rng(3).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    pixels, _ = Preprocessor(8, 8, layout="bgr_u8")(image)
    floats, _ = Preprocessor(8, 8)(image)
    assert pixels.shape == (1, 8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(det.infer(pixels), expected(floats), rtol=0, atol=1e-6)
    assert np.array_equal(det.infer(floats), expected(floats))  # float input: exact, no preprocessing inside


@needs_ov
@pytest.mark.parametrize("streams", [1, 2])
def test_openvino_infer_is_thread_safe(tmp_path: Path, streams: int) -> None:
    """Several workers on one model: one stream (latency) or a stream per worker (NUM_STREAMS)."""
    from edgedet.model import load_detector

    det = load_detector(write_openvino(tmp_path / "tiny_openvino_model", metadata()), threads=1, workers=streams)
    assert det.streams == streams and run_threads(det) == []


def _openvino_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = write_openvino(tmp_path / "good_openvino_model", metadata())
    empty = tmp_path / "empty_openvino_model"
    empty.mkdir()
    no_meta = write_openvino(tmp_path / "nometa_openvino_model", None)
    no_bin = write_openvino(tmp_path / "nobin_openvino_model", metadata())
    (no_bin / "tiny.bin").unlink()
    junk = tmp_path / "junk_openvino_model"
    junk.mkdir()
    (junk / "junk.xml").write_text("hello, not a model")
    (junk / "junk.bin").write_bytes(b"0")
    three = write_openvino(tmp_path / "three_openvino_model", metadata(names={0: "a", 1: "b", 2: "c"}))
    bad_yaml = write_openvino(tmp_path / "badyaml_openvino_model", metadata())
    (bad_yaml / "metadata.yaml").write_text("names: [unclosed\n")
    return {
        "missing": (tmp_path / "nope_openvino_model", "nope_openvino_model: model file not found"),
        "empty dir": (empty, "empty_openvino_model: no OpenVINO model (.xml) in this directory"),
        "not ir": (DEMO_MODEL if DEMO_MODEL.is_file() else good / "metadata.yaml", "not an OpenVINO model"),
        "no metadata": (no_meta, "nometa_openvino_model: no model metadata (metadata.yaml next to tiny.xml)"),
        "no bin": (no_bin, "tiny.xml: weights file tiny.bin is missing next to it"),
        "junk xml": (junk, "junk.xml: not an OpenVINO model (not an IR .xml file)"),
        "class count": (three, "model outputs 2 classes but its metadata names 3 (a, b, c...)"),
        "bad yaml": (bad_yaml, "metadata.yaml: cannot read model metadata: "),
    }


@needs_ov
@pytest.mark.parametrize(
    "case", ["missing", "empty dir", "not ir", "no metadata", "no bin", "junk xml", "class count", "bad yaml"]
)
def test_openvino_bad_files_one_line_errors(tmp_path: Path, case: str) -> None:
    from edgedet.model.openvino import OpenVinoDetector

    path, message = _openvino_cases(tmp_path)[case]
    assert message in load_error(OpenVinoDetector, path)


@needs_ov
def test_openvino_cpu_only(tmp_path: Path) -> None:
    from edgedet.model.openvino import OpenVinoDetector

    check_cpu_only(OpenVinoDetector, write_openvino(tmp_path / "tiny_openvino_model", metadata()), "openvino")
