"""Reduced-precision exports on the real demo model, end to end through the CLI: bf16 TorchScript
and OpenVINO, int8 OpenVINO (NNCF) and ONNX (onnxruntime.quantization), each calibrated on and
guarded against frames of the demo clip; ``edgedet info``; detection parity with fp32 through
``edgedet detect`` (the daemon's pre/post-processing); the guard saying no (exit 2) and --force;
the daemon running an int8 model; ``edgedet tune`` measuring, ranking and ``--write``.

Exports are at imgsz 160 (CI time: ~8 s each on 2 cores); the full-size 640 exports are the demo's
``make model`` outputs, whose guard figures are checked when present. One subprocess at a time.

Tolerances, measured on the reference box (AVX512_BF16 + AMX), demo clip, 12 held-out frames at
160: bf16 F1 0.98 (TorchScript autocast and OpenVINO alike), int8 F1 0.92 (OpenVINO) / 0.94 (ONNX)
at 160 -- lower than at 640 (0.97+), where objects span more pixels. Parity on bus.jpg/zidane.jpg
therefore asks F1 >= 0.9 for bf16 and >= 0.75 for int8 at 160, and the guard's own figures
(--min-f1 0.85 here) are what the export stored.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgedet.model.export.guard import agreement
from edgedet.types import Detection
from tests.paths import DEMO_WEIGHTS, REPO, ultralytics_assets

ASSETS = ultralytics_assets()
CLIP = REPO / ".cache" / "demo" / "demo.mp4"
HAS_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(ASSETS is None or not DEMO_WEIGHTS.is_file() or not CLIP.is_file(),
                       reason="needs ultralytics, .cache/demo-model/best.pt (make model) and the clip (make assets)"),
    pytest.mark.skipif(not (HAS_OV and HAS_ORT), reason="needs edgedet[openvino,int8,onnx,export]"),
]
IMGSZ = "160"
CALIB = ("--calib", str(CLIP), "--calib-frames", "24", "--val-frames", "12")
MIN_F1 = "0.85"
PARITY_F1 = {"bf16": 0.9, "int8": 0.75}


def edgedet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def export(out: Path, fmt: str, precision: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return edgedet("export", "--weights", str(DEMO_WEIGHTS), "--imgsz", IMGSZ, "--format", fmt,
                   "--precision", precision, "-o", str(out), *extra)


VARIANTS = {
    "ts-bf16": ("torchscript", "bf16", "m-bf16.torchscript"),
    "ov-bf16": ("openvino", "bf16", "m-bf16_openvino_model"),
    "ov-int8": ("openvino", "int8", "m-int8_openvino_model"),
    "onnx-int8": ("onnx", "int8", "m-int8.onnx"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    out = {"fp32": root / "m.torchscript"}
    result = edgedet("export", "--weights", str(DEMO_WEIGHTS), "--imgsz", IMGSZ, "-o", str(out["fp32"]))
    assert result.returncode == 0, result.stderr[-2000:]
    for key, (fmt, precision, name) in VARIANTS.items():
        result = export(root / name, fmt, precision, *CALIB, "--min-f1", MIN_F1)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{precision} model:" in result.stdout and "agreement with fp32" in result.stdout
        out[key] = root / name
    return out


def detect(model: Path) -> list[tuple[Detection, ...]]:
    assert ASSETS is not None
    result = edgedet("detect", str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg"), "--model", str(model))
    assert result.returncode == 0, result.stderr[-2000:]
    return [tuple(Detection(d["label"], d["class_id"], d["score"], tuple(d["box"]))
                  for d in json.loads(line)["detections"]) for line in result.stdout.splitlines()]


def info(model: Path) -> dict[str, Any]:
    result = edgedet("info", str(model), "--json")
    assert result.returncode == 0, result.stderr
    meta: dict[str, Any] = json.loads(result.stdout)
    return meta


@pytest.mark.parametrize("key", list(VARIANTS))
def test_metadata_records_precision_calibration_and_agreement(models, key):
    fmt, precision, _ = VARIANTS[key]
    ours = info(models[key])["edgedet"]
    assert ours["precision"] == precision and ours["format"] == fmt
    assert ours["calib_source"] == str(CLIP) and ours["calib_frames"] == 24 and ours["val_frames"] == 12
    agree = ours["agreement"]
    assert agree["frames"] == 12 and agree["reference"] > 0
    assert agree["f1"] >= float(MIN_F1) and ours["guard"] == "passed"
    text = edgedet("info", str(models[key])).stdout
    assert f"precision  {precision}" in text and f"F1 {agree['f1']:.3f}" in text and "guard passed" in text


@pytest.fixture(scope="module")
def reference(models: dict[str, Path]) -> list[tuple[Detection, ...]]:
    return detect(models["fp32"])


@pytest.mark.parametrize("key", list(VARIANTS))
def test_detect_parity_with_fp32(models, reference, key):
    """Through `edgedet detect` (the daemon's preprocess, backend and NMS) on images the guard never saw."""
    ref = reference
    got = detect(models[key])
    result = agreement(ref, got)
    assert result.reference > 0
    assert result.f1 >= PARITY_F1[VARIANTS[key][1]], result.line()


def test_bf16_really_runs_reduced(models, reference):
    """The bf16 TorchScript file holds fp32 weights; its detections differ (slightly) from fp32 because
    the detector runs it under autocast, as its metadata says."""
    ref, got = reference, detect(models["ts-bf16"])
    result = agreement(ref, got)
    assert 0 < result.worst_box_px + result.worst_score, "bf16 detections identical to fp32: autocast not applied"


def test_guard_says_no_then_force(tmp_path):
    """Calibrated on one black frame, int8 saturates everywhere: the guard refuses (exit 2, figures
    printed, nothing written); --force writes it and records it as forced."""
    import cv2
    import numpy as np

    black = tmp_path / "black"
    black.mkdir()
    cv2.imwrite(str(black / "0.png"), np.zeros((480, 640, 3), np.uint8))
    out = tmp_path / "bad.onnx"
    args = ("--calib", str(black), "--val", str(CLIP), "--val-frames", "8")
    result = export(out, "onnx", "int8", *args)
    assert result.returncode == 2, result.stdout + result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: int8 onnx model fails the accuracy guard: F1 ") and "--force" in line, line
    assert "Traceback" not in result.stderr and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.onnx")]  # no temp left behind
    forced = export(out, "onnx", "int8", *args, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert info(out)["edgedet"]["guard"] == "forced"


@pytest.mark.parametrize(("args", "message"), [
    (("--format", "onnx", "--precision", "bf16"), "error: --precision bf16: not available for --format onnx"),
    (("--format", "openvino", "--precision", "int8"), "error: --precision int8 needs --calib"),
    (("--precision", "int8", "--half"), "error: --half is --precision fp16"),
    (("--format", "openvino", "--precision", "int8", "--calib", "/nonexistent.mp4"),
     "error: --calib: /nonexistent.mp4: no such file or directory"),
])
def test_bad_precision_arguments(tmp_path, args, message):
    result = edgedet("export", "--weights", str(DEMO_WEIGHTS), "--imgsz", IMGSZ, "-o", str(tmp_path / "x"), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_full_size_demo_models_pass_the_guard():
    """`make model` builds the demo's 640x640 bf16 and int8 OpenVINO models from the demo clip."""
    for precision in ("bf16", "int8"):
        path = REPO / "models" / f"demo-{precision}_openvino_model"
        if not path.is_dir():
            pytest.skip(f"{path} not built (make model)")
        ours = info(path)["edgedet"]
        assert ours["precision"] == precision and ours["input_shape"] == [1, 3, 640, 640]
        assert ours["agreement"]["f1"] >= 0.95 and ours["guard"] == "passed"


def test_daemon_runs_int8_model(models, start_daemon, assets):
    """`edgedet run` on the int8 OpenVINO model: detections arrive over MQTT like with fp32."""
    d = start_daemon({"cam": {"url": str(assets.clip), "realtime": False}},
                     model={"path": str(models["ov-int8"]), "backend": "openvino"})
    msg = d.sub.wait_message("edgedet/testnode/cam/detections", timeout=120)
    payload = json.loads(msg.payload)
    assert payload["camera"] == "cam" and isinstance(payload["detections"], list)


def test_tune_ranks_and_writes(models, tmp_path):
    """`edgedet tune` on two accepted candidates and one forced below the line: ranked table, the
    forced one never recommended, --write edits the config and keeps its comments."""
    from tests.daemoncfg import write_config
    from tests.helpers import free_port

    cand = tmp_path / "models"
    cand.mkdir()
    shutil.copy2(models["fp32"], cand / "m.torchscript")
    shutil.copytree(models["ov-int8"], cand / "m-int8_openvino_model")
    bad = cand / "m-bad_openvino_model"
    shutil.copytree(models["ov-int8"], bad)
    meta = yaml.safe_load((bad / "metadata.yaml").read_text())
    meta["edgedet"]["agreement"]["f1"], meta["edgedet"]["guard"] = 0.5, "forced"
    (bad / "metadata.yaml").write_text(yaml.safe_dump(meta))
    cfg, _ = write_config(tmp_path, {"cam": {"url": str(CLIP), "realtime": False}}, free_port(),
                          model={"path": str(cand / "m.torchscript")})
    cfg.write_text("# my box: keep this comment\n" + cfg.read_text())
    result = edgedet("tune", "-c", str(cfg), "--frames", "8", "--raw-iters", "3", "--layouts", "1x2",
                     "--json", str(tmp_path / "tune.json"), "--write", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = json.loads((tmp_path / "tune.json").read_text())["rows"]
    assert {Path(r["path"]).name for r in rows} == {"m.torchscript", "m-int8_openvino_model", "m-bad_openvino_model"}
    assert all(r.get("pipeline_fps", 0) > 0 and r.get("forward_ms", 0) > 0 for r in rows), rows
    fps = [r["pipeline_fps"] for r in rows]
    assert fps == sorted(fps, reverse=True)  # ranked
    assert "not recommended (F1 0.500 < 0.95)" in result.stdout
    best = json.loads((tmp_path / "tune.json").read_text())["best"]
    assert Path(best["path"]).name != "m-bad_openvino_model"
    text = cfg.read_text()
    assert text.startswith("# my box: keep this comment\n")
    written = yaml.safe_load(text)
    assert written["model"]["path"] == best["path"] and written["workers"]["count"] == 1
    assert (tmp_path / (cfg.name + ".bak")).is_file()
    assert edgedet("check-config", str(cfg)).returncode == 0


def test_tune_exports_aspect_matched_twins(models, tmp_path):
    """The config's camera is the 16:9 demo clip and the candidates are square (160): with --weights,
    tune exports the 96x160 twin of each (format, precision) -- the bf16 one through its guard -- and
    ranks them with the square ones."""
    from tests.daemoncfg import write_config
    from tests.helpers import free_port

    cand = tmp_path / "models"
    cand.mkdir()
    shutil.copy2(models["fp32"], cand / "m.torchscript")
    shutil.copytree(models["ov-bf16"], cand / "m-bf16_openvino_model")
    cfg, _ = write_config(tmp_path, {"cam": {"url": str(CLIP), "realtime": False}}, free_port(),
                          model={"path": str(cand / "m.torchscript")})
    result = edgedet("tune", "-c", str(cfg), "--weights", str(DEMO_WEIGHTS), "--frames", "8", "--raw-iters", "3",
                     "--layouts", "1x2", "--min-f1", MIN_F1, "--json", str(tmp_path / "tune.json"), timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "exporting m-96x160.torchscript" in result.stdout
    assert "exporting m-bf16-96x160_openvino_model" in result.stdout and "--rect 16:9" in result.stdout
    rows = json.loads((tmp_path / "tune.json").read_text())["rows"]
    shapes = {(Path(r["path"]).name, tuple(r["imgsz"])) for r in rows}
    assert shapes == {("m.torchscript", (160, 160)), ("m-bf16_openvino_model", (160, 160)),
                      ("m-96x160.torchscript", (96, 160)), ("m-bf16-96x160_openvino_model", (96, 160))}
    assert all(r.get("pipeline_fps", 0) > 0 for r in rows), rows
    twin = info(cand / "m-bf16-96x160_openvino_model")["edgedet"]
    assert twin["input_shape"] == [1, 3, 96, 160] and twin["guard"] == "passed" and twin["val_frames"] == 12
    # a second run finds the twins beside model.path and exports nothing
    again = edgedet("tune", "-c", str(cfg), "--frames", "4", "--raw-iters", "2", "--layouts", "1x2",
                    "--min-f1", MIN_F1, timeout=900)
    assert again.returncode == 0 and "exporting" not in again.stdout and "no aspect-matched" not in again.stdout
