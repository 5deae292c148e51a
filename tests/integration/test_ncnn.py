"""The ncnn backend on the real demo model: ``edgedet export --format ncnn`` (pnnx from the export
extra), detections equal to the TorchScript fp32 reference's on bus.jpg, zidane.jpg and frames of
the demo clip (fp32 and ``model.half``), ``edgedet detect`` / ``edgedet info`` on the directory, and
one-line errors for bad files and a failing converter.

The 640x640 model is ``models/demo_ncnn_model`` (``make model`` builds it; exported here when
missing); tests that need an export of their own use 160x160. Every model runs in a subprocess,
one at a time (two runtimes at once on a 2-core box slow each other down 10x or more).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemoncfg import frames_clip
from tests.paths import DEMO_MODEL, DEMO_WEIGHTS, REPO, ultralytics_assets

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("pnnx") is None,
        reason="ncnn/pnnx not installed (pip install 'edgedet[export,ncnn]')",
    ),
    pytest.mark.skipif(
        ultralytics_assets() is None or not DEMO_WEIGHTS.is_file() or not DEMO_MODEL.is_file(),
        reason="needs ultralytics (pip install 'edgedet[export]'), .cache/demo-model/best.pt and `make model`",
    ),
]
DEMO_NCNN = REPO / "models" / "demo_ncnn_model"

# Detection parity with the TorchScript fp32 reference (same count, same classes, boxes in original
# image pixels, scores). Measured on x86-64 (ncnn 1.0.20261020, 2 threads), unrounded, over bus.jpg,
# zidane.jpg and 4 demo frames: boxes <= 0.0005 px, scores <= 7.2e-7 (the raw head output differs by
# 2e-3 px at the model input: conv kernels summing in another order). The limits leave room for
# other CPUs' kernels (aarch64 NEON) and for the CLI's rounding (0.1 px, 1e-4) and stay well inside
# the project-wide detection parity target (1 px, 0.01).
BOX_TOL_PX = 0.25
SCORE_TOL = 0.002
# model.half on a CPU with fp16 (Armv8.2 asimdhp): fp16 weights and blobs, fp32 arithmetic; the
# project-wide parity target (on the emulated Cortex-A76: 0.5 px, 0.0005 against its fp32).
FP16_BOX_TOL_PX = 1.0
FP16_SCORE_TOL = 0.01
EXPORT_DIFF = re.compile(r"ncnn \S+ vs eager \(fused\): boxes (\S+) px, scores (\S+)")

RAW = r"""
import json, sys
import cv2
from edgedet.model import load_detector
from edgedet.postprocess import decode
from edgedet.preprocess import Preprocessor
path, backend, half = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
det = load_detector(path, backend=backend, half=half or None, threads=2)
pre = Preprocessor(*det.info.imgsz, dtype=det.np_dtype, layout=det.input_layout)
out = {}
for image in sys.argv[4:]:
    tensor, geo = pre(cv2.imread(image))
    dets = decode(det.infer(tensor), geo, det.info.names, conf=0.25, iou=0.7)
    out[image] = [[d.class_id, float(d.score), *(float(v) for v in d.xyxy)] for d in dets]
fp16_cpu = False
if backend == "ncnn":
    import ncnn
    fp16_cpu = bool(getattr(ncnn, "cpu_support_arm_asimdhp", lambda: 0)())
print(json.dumps({"runtime": det.runtime, "fp16_cpu": fp16_cpu, "images": out}))
"""


def edgedet(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def raw_detections(model: Path, backend: str, images: list[str], half: bool = False) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", RAW, str(model), backend, "1" if half else "0", *images],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


Rows = dict[str, list[list[float]]]  # image -> [class_id, score, x1, y1, x2, y2] per detection


def differences(got: Rows, want: Rows) -> dict[str, tuple[float, float]]:
    """Per image (max box px, max score) difference; asserts the same detections and classes."""
    figures = {}
    for image, ref in want.items():
        dets = got[image]
        assert len(dets) == len(ref) > 0, (image, dets, ref)
        assert [d[0] for d in dets] == [r[0] for r in ref], image
        box = max(abs(a - b) for d, r in zip(dets, ref, strict=True) for a, b in zip(d[2:], r[2:], strict=True))
        score = max(abs(d[1] - r[1]) for d, r in zip(dets, ref, strict=True))
        figures[Path(image).name] = (box, score)
    return figures


def export(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return edgedet("export", "--weights", str(DEMO_WEIGHTS), "--format", "ncnn", "-o", str(out), *extra, env=env)


@pytest.fixture(scope="module")
def images(assets: Any) -> list[str]:
    ultra = ultralytics_assets()
    assert ultra is not None
    frames = [assets.frames / f"{i:05d}.jpg" for i in (0, 100, 200, 299)]
    return [str(ultra / "bus.jpg"), str(ultra / "zidane.jpg"), *map(str, frames)]


@pytest.fixture(scope="module")
def ncnn_640(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (DEMO_NCNN / "metadata.yaml").is_file():
        return DEMO_NCNN
    out = tmp_path_factory.mktemp("ncnn640") / "demo_ncnn_model"
    result = export(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def reference(images: list[str]) -> dict[str, Any]:
    return raw_detections(DEMO_MODEL, "torchscript", images)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An export of its own at 160x160 (seconds): layout, metadata, errors."""
    out = tmp_path_factory.mktemp("ncnn160") / "fall_ncnn_model"
    result = export(out, "--imgsz", "160")
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


# --------------------------------------------------------------------------- parity


def test_ncnn_detections_match_torchscript(ncnn_640: Path, reference: dict[str, Any]) -> None:
    ours = raw_detections(ncnn_640, "ncnn", list(reference["images"]))
    figures = differences(ours["images"], reference["images"])
    for name, (box, score) in figures.items():
        print(f"{ours['runtime']} fp32 vs {reference['runtime']} fp32, {name}: boxes {box:.4f} px, scores {score:.2e}")
        assert box <= BOX_TOL_PX and score <= SCORE_TOL, (name, box, score)


def test_ncnn_half_detections_match_torchscript(ncnn_640: Path, reference: dict[str, Any]) -> None:
    """model.half: fp16 storage, fp32 arithmetic. x86-64 has no ncnn fp16 kernels: fp32 parity holds."""
    ours = raw_detections(ncnn_640, "ncnn", list(reference["images"]), half=True)
    box_tol, score_tol = (FP16_BOX_TOL_PX, FP16_SCORE_TOL) if ours["fp16_cpu"] else (BOX_TOL_PX, SCORE_TOL)
    for name, (box, score) in differences(ours["images"], reference["images"]).items():
        print(f"{ours['runtime']} half vs torchscript fp32, {name}: boxes {box:.4f} px, scores {score:.2e}")
        assert box <= box_tol and score <= score_tol, (name, box, score)


@pytest.mark.parametrize("target", ["directory", "param"])
def test_detect_cli_on_the_ncnn_model(ncnn_640: Path, images: list[str], target: str) -> None:
    """`edgedet detect --model X_ncnn_model` (auto: ncnn) prints what the TorchScript model prints."""
    model = ncnn_640 if target == "directory" else ncnn_640 / "model.ncnn.param"
    runs = []
    for path in (DEMO_MODEL, model):
        result = edgedet("detect", *images, "--model", str(path), "--conf", "0.25", "--iou", "0.7")
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append([json.loads(line) for line in result.stdout.splitlines()])
    for want, got in zip(*runs, strict=True):
        assert got["image"] == want["image"] and got["model"] == want["model"] == "demo"
        as_rows = {got["image"]: [[d["class_id"], d["score"], *d["box"]] for d in got["detections"]]}
        expected = {want["image"]: [[d["class_id"], d["score"], *d["box"]] for d in want["detections"]]}
        ((box, score),) = differences(as_rows, expected).values()
        assert box <= BOX_TOL_PX and score <= SCORE_TOL


# --------------------------------------------------------------------------- export


def test_ncnn_export_matches_eager_and_keeps_metadata(small: tuple[Path, str]) -> None:
    path, stdout = small
    m = EXPORT_DIFF.search(stdout)
    assert m is not None, stdout
    assert float(m.group(1)) <= 0.05 and float(m.group(2)) <= 1e-4
    assert sorted(p.name for p in path.iterdir()) == ["metadata.yaml", "model.ncnn.bin", "model.ncnn.param"]
    meta = yaml.safe_load((path / "metadata.yaml").read_text())
    assert meta["names"] == {0: "Normal", 1: "Fall"} and meta["imgsz"] == [160, 160] and meta["stride"] == 32
    assert (meta["task"], meta["batch"], meta["args"]["half"]) == ("detect", 1, False)
    ours = meta["edgedet"]
    assert (ours["format"], ours["precision"], ours["source"]) == ("ncnn", "fp32", "best.pt") and ours["source_sha256"]
    graph = (path / "model.ncnn.param").read_text().splitlines()
    assert graph[0] == "7767517" and re.fullmatch(r"Input\s+in0\s+0 1 in0 0=160 1=160 2=3", graph[2])
    assert not [line for line in graph if line.split()[0].startswith(("pnnx.", "aten::", "prim::"))]
    for p in (path, *path.iterdir()):
        assert p.stat().st_mode & 0o044 == 0o044  # readable by the daemon's user, not mkdtemp's 0700
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp or scratch dir left
    leftovers = [p.name for p in REPO.iterdir() if "pnnx" in p.name or p.name.startswith("debug")]
    assert leftovers == []  # pnnx's side files (model_pnnx.py, .pnnx.param, debug.bin) stay in its scratch dir


def test_ncnn_export_auto_info_and_detect(small: tuple[Path, str], images: list[str]) -> None:
    path, _ = small
    info = edgedet("info", str(path), timeout=120)
    assert info.returncode == 0, info.stderr
    assert f"model      {path} (ncnn)" in info.stdout and "input      1x3x160x160, stride 32" in info.stdout
    assert "precision  fp32" in info.stdout and "source     best.pt" in info.stdout
    result = edgedet("detect", images[0], "--model", str(path), timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["model"] == "fall" and isinstance(record["detections"], list)


@pytest.mark.parametrize("case", ["no metadata", "missing bin", "class count", "cuda", "truncated bin"])
def test_ncnn_bad_files_one_line_errors(tmp_path: Path, small: tuple[Path, str], images: list[str],
                                        case: str) -> None:
    src, _ = small
    bad = tmp_path / "bad_ncnn_model"
    bad.mkdir()
    for name in ("model.ncnn.param", "model.ncnn.bin", "metadata.yaml"):
        (bad / name).symlink_to(src / name)
    extra: list[str] = []
    if case == "no metadata":
        (bad / "metadata.yaml").unlink()
        message = "bad_ncnn_model: no model metadata (metadata.yaml next to model.ncnn.param)"
    elif case == "missing bin":
        (bad / "model.ncnn.bin").unlink()
        message = "model.ncnn.param: weights file model.ncnn.bin is missing next to it"
    elif case == "class count":
        meta = yaml.safe_load((src / "metadata.yaml").read_text())
        meta["names"] = {0: "a", 1: "b", 2: "c"}
        (bad / "metadata.yaml").unlink()
        (bad / "metadata.yaml").write_text(yaml.safe_dump(meta))
        message = "model outputs 2 classes but its metadata names 3"
    elif case == "cuda":
        extra = ["--device", "cuda"]
        message = "model.device cuda: the ncnn backend runs on cpu only"
    else:
        (bad / "model.ncnn.bin").unlink()
        (bad / "model.ncnn.bin").write_bytes((src / "model.ncnn.bin").read_bytes()[:4096])
        message = "model.ncnn.bin: ncnn cannot read the weights (truncated, or another model's?)"
    result = edgedet("detect", images[0], "--model", str(bad), *extra, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    if case == "truncated bin":
        lines = lines[-1:]  # ncnn prints its own reason on stderr first ("ModelBin read weight_data failed")
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_export_fails_cleanly_when_pnnx_fails(tmp_path: Path) -> None:
    """A converter that exits non-zero: one error line with its last words; nothing written, nothing left."""
    shim = tmp_path / "shim" / "pnnx"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("")
    (shim / "pnnx").write_text("#!/bin/sh\necho 'converting...'\necho 'unsupported operator aten::foo' >&2\nexit 3\n")
    (shim / "pnnx").chmod(0o755)
    out = tmp_path / "out" / "x_ncnn_model"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{REPO}"}
    result = export(out, "--imgsz", "64", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: ncnn conversion failed: pnnx exited 3: unsupported operator aten::foo", result.stderr
    assert "Traceback" not in result.stderr
    assert list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- the daemon


def test_daemon_runs_the_ncnn_model(tmp_path: Path, assets: Any, ncnn_640: Path, start_daemon: Any) -> None:
    """model.backend: ncnn with model.half on the CPU (valid for ncnn only): every frame of a file is
    published, and the node info names the backend."""
    clip = frames_clip(assets.frames, tmp_path / "short.mp4", 8)
    proc, sub, _ = start_daemon({"file": {"url": str(clip), "realtime": False, "queue_size": 2}},
                                model={"path": str(ncnn_640), "backend": "ncnn", "half": True},
                                mqtt={"publish_empty": True})
    assert proc.wait(timeout=180) == 0, proc.output()
    sub.wait_for(lambda m: len([x for x in m if x.topic.endswith("/file/detections")]) >= 8, timeout=10,
                 what="all 8 frames")
    info = [json.loads(m.payload) for m in sub.messages("edgedet/testnode/info") if m.payload]
    assert info and info[0]["backend"] == "ncnn" and info[0]["model"] == "demo"
    out = proc.output()
    assert re.search(r"model demo \(ncnn \S+, input 640x640\) on cpu; \d worker\(s\) x \d thread\(s\)", out), out
    assert "all cameras ended; 8 frame(s) processed" in out
