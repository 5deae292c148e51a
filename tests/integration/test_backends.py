"""ONNX Runtime and OpenVINO backends on the real demo model: export from the same checkpoint,
detections equal to the TorchScript backend's on bus.jpg and zidane.jpg, one-line errors for bad
files through the CLI, and a forward-latency comparison (printed; run with -s to see it).

Each backend test skips when its runtime is not installed (pip install 'edgedet[onnx]' /
'edgedet[openvino]'). Every model runs in a subprocess, one at a time: two torch / ONNX Runtime
processes at once on a 2-core box slow each other down 10x or more.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.paths import DEMO_MODEL, DEMO_WEIGHTS, REPO, ultralytics_assets

pytestmark = pytest.mark.integration
ASSETS = ultralytics_assets()
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
needs_export = pytest.mark.skipif(
    ASSETS is None or not DEMO_WEIGHTS.is_file() or not DEMO_MODEL.is_file(),
    reason="needs ultralytics (pip install 'edgedet[export]'), .cache/demo-model/best.pt and `make model`",
)
needs_ort = pytest.mark.skipif(
    not HAS_ORT, reason="onnxruntime/onnx not installed (pip install 'edgedet[onnx,export]')"
)
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino not installed (pip install 'edgedet[openvino]')")

BOX_TOL_PX = 1.0  # detection parity with the TorchScript reference, in original-image pixels
SCORE_TOL = 0.01
EXPORT_DIFF = re.compile(r"(onnxruntime|openvino) \S+ vs eager \(fused\): boxes (\S+) px, scores (\S+)")


def edgedet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def detect(model: Path, *extra: str) -> list[dict[str, Any]]:
    assert ASSETS is not None
    images = [str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]
    result = edgedet("detect", *images, "--model", str(model), "--conf", "0.25", "--iou", "0.7", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def export(fmt: str, out: Path) -> tuple[Path, float, float]:
    result = edgedet("export", "--weights", str(DEMO_WEIGHTS), "--format", fmt, "-o", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    m = EXPORT_DIFF.search(result.stdout)
    assert m is not None, result.stdout
    return out, float(m.group(2)), float(m.group(3))


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    return detect(DEMO_MODEL)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    if not HAS_ORT:
        pytest.skip("onnxruntime/onnx not installed (pip install 'edgedet[onnx,export]')")
    return export("onnx", tmp_path_factory.mktemp("onnx") / "demo.onnx")


@pytest.fixture(scope="module")
def openvino_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    if not HAS_OV:
        pytest.skip("openvino not installed (pip install 'edgedet[openvino]')")
    return export("openvino", tmp_path_factory.mktemp("ov") / "demo_openvino_model")


def compare(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> tuple[float, float]:
    worst_box = worst_score = 0.0
    for g, w in zip(got, want, strict=True):
        assert g["image"] == w["image"] and g["model"] == w["model"] == "demo"
        assert len(g["detections"]) == len(w["detections"]) > 0, g["image"]
        for a, b in zip(g["detections"], w["detections"], strict=True):
            assert a["class_id"] == b["class_id"] and a["label"] == b["label"], g["image"]
            worst_score = max(worst_score, abs(a["score"] - b["score"]))
            worst_box = max(worst_box, *(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)))
    assert worst_box <= BOX_TOL_PX and worst_score <= SCORE_TOL
    return worst_box, worst_score


# --------------------------------------------------------------------------- export + parity


@needs_export
@needs_ort
def test_onnx_export_matches_eager_and_keeps_metadata(onnx_model):
    import onnx

    path, box, score = onnx_model
    assert box <= 0.05 and score <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["names"] == "{0: 'Normal', 1: 'Fall'}" and props["imgsz"] == "[640, 640]"
    assert (props["stride"], props["task"], props["batch"]) == ("32", "detect", "1")
    ours = json.loads(props["edgedet"])
    assert ours["format"] == "onnx" and ours["source"] == "best.pt" and ours["source_sha256"]
    assert path.stat().st_mode & 0o044 == 0o044  # readable by the daemon's user, not mkstemp's 0600
    assert not list(path.parent.glob(".*.tmp"))


@needs_export
@needs_ov
def test_openvino_export_matches_eager_and_keeps_metadata(openvino_model):
    import yaml

    path, box, score = openvino_model
    assert box <= 0.05 and score <= 1e-4
    assert sorted(p.name for p in path.iterdir()) == ["demo.bin", "demo.xml", "metadata.yaml"]
    meta = yaml.safe_load((path / "metadata.yaml").read_text())
    assert meta["names"] == {0: "Normal", 1: "Fall"} and meta["imgsz"] == [640, 640] and meta["stride"] == 32
    assert meta["edgedet"]["format"] == "openvino"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@needs_export
@needs_ort
def test_onnxruntime_detections_equal_torchscript(onnx_model, reference):
    box, score = compare(detect(onnx_model[0]), reference)
    print(f"onnxruntime vs torchscript: max box diff {box:.3f} px, max score diff {score:.5f}")


@needs_export
@needs_ov
@pytest.mark.parametrize("target", ["directory", "xml"])
def test_openvino_detections_equal_torchscript(openvino_model, reference, target):
    path = openvino_model[0] if target == "directory" else openvino_model[0] / "demo.xml"
    box, score = compare(detect(path), reference)
    print(f"openvino vs torchscript: max box diff {box:.3f} px, max score diff {score:.5f}")


# --------------------------------------------------------------------------- bad files


def _bad_onnx(tmp_path: Path, onnx_path: Path, case: str) -> tuple[list[str], str]:
    """Model arguments for `edgedet detect` and the expected error, building only ``case``'s file."""
    if case == "missing":
        return [str(tmp_path / "nope.onnx")], "nope.onnx: model file not found"
    if case == "junk":
        (tmp_path / "junk.onnx").write_bytes(b"not a model\n" * 100)
        return [str(tmp_path / "junk.onnx")], "junk.onnx: not an ONNX model or cannot load it (onnxruntime: "
    if case == "torchscript renamed":
        shutil.copy(DEMO_MODEL, tmp_path / "renamed.onnx")
        return [str(tmp_path / "renamed.onnx")], "renamed.onnx: not an ONNX model (it looks like a TorchScript file"
    if case == "wrong backend":
        return [str(DEMO_MODEL), "--backend", "onnxruntime"], "demo.torchscript: not an ONNX model"
    if case == "onnx as torchscript":
        return [str(onnx_path), "--backend", "torchscript"], "demo.onnx: not a TorchScript file"
    import onnx

    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    if case == "no metadata":
        onnx.save(model, str(tmp_path / "bare.onnx"))
        return [str(tmp_path / "bare.onnx")], "bare.onnx: no model metadata (ONNX metadata_props"
    assert case == "class count"
    for key, value in {"names": "{0: 'a', 1: 'b', 2: 'c'}", "imgsz": "[640, 640]"}.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(tmp_path / "three.onnx"))
    return [str(tmp_path / "three.onnx")], "three.onnx: model outputs 2 classes but its metadata names 3"


@needs_export
@needs_ort
@pytest.mark.parametrize(
    "case",
    ["missing", "junk", "torchscript renamed", "no metadata", "class count", "wrong backend", "onnx as torchscript"],
)
def test_onnx_bad_files_one_line_errors(tmp_path, onnx_model, case):
    assert ASSETS is not None
    model_args, message = _bad_onnx(tmp_path, onnx_model[0], case)
    result = edgedet("detect", str(ASSETS / "bus.jpg"), "--model", *model_args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@needs_export
@needs_ov
@pytest.mark.parametrize("case", ["no metadata", "missing bin", "class count", "cuda"])
def test_openvino_bad_files_one_line_errors(tmp_path, openvino_model, case):
    import yaml

    assert ASSETS is not None
    src = openvino_model[0]
    ir = tmp_path / "bad_openvino_model"
    ir.mkdir()
    for name in ("demo.xml", "demo.bin", "metadata.yaml"):
        (ir / name).symlink_to(src / name)
    extra: list[str] = []
    if case == "no metadata":
        (ir / "metadata.yaml").unlink()
        message = "bad_openvino_model: no model metadata (metadata.yaml next to demo.xml)"
    elif case == "missing bin":
        (ir / "demo.bin").unlink()
        message = "demo.xml: weights file demo.bin is missing next to it"
    elif case == "class count":
        meta = yaml.safe_load((src / "metadata.yaml").read_text())
        meta["names"] = {0: "a", 1: "b", 2: "c"}
        (ir / "metadata.yaml").unlink()
        (ir / "metadata.yaml").write_text(yaml.safe_dump(meta))
        message = "model outputs 2 classes but its metadata names 3"
    else:
        extra = ["--device", "cuda"]
        message = "model.device cuda: the openvino backend runs on cpu only"
    result = edgedet("detect", str(ASSETS / "bus.jpg"), "--model", str(ir), *extra, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


# --------------------------------------------------------------------------- latency

BENCH = r"""
import json, statistics, sys, time
import numpy as np
from edgedet.model import load_detector
from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads
runs, threads = int(sys.argv[1]), int(sys.argv[2])
x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
out = {}
for name, path in zip(sys.argv[3::2], sys.argv[4::2]):
    if name == "torchscript":
        set_torch_threads(threads)
        det = TorchScriptDetector(path, channels_last=True, warmup=2)
    else:
        det = load_detector(path, backend=name, threads=threads)
        for _ in range(2):
            det.infer(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        det.infer(x)
        times.append((time.perf_counter() - t0) * 1000)
    out[name] = {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}
    del det
    time.sleep(1.0)  # let the previous runtime's worker threads stop spinning before the next one
print(json.dumps(out))
"""


@needs_export
def test_forward_latency_same_process(request):
    """Median forward latency at 1x3x640x640 with 2 threads, all backends in ONE process run one after
    the other (figures drift with other load on the box: compare within one run only)."""
    models = ["torchscript", str(DEMO_MODEL)]
    if HAS_ORT:
        models += ["onnxruntime", str(request.getfixturevalue("onnx_model")[0])]
    if HAS_OV:
        models += ["openvino", str(request.getfixturevalue("openvino_model")[0])]
    result = subprocess.run(
        [sys.executable, "-c", BENCH, "10", "2", *models], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for name, f in figures.items():
        print(f"{name}: median {f['median_ms']:.1f} ms, min {f['min_ms']:.1f} ms over {f['runs']} runs (2 threads)")
        assert 0 < f["min_ms"] <= f["median_ms"] < 60_000
