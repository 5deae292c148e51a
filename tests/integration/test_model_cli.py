"""`edgedet detect` end to end with the real demo model, and every bad-model / bad-image case."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.paths import DEMO_MODEL, DEMO_WEIGHTS, REPO, ultralytics_assets

pytestmark = pytest.mark.integration

ASSETS = ultralytics_assets()
needs_assets = pytest.mark.skipif(ASSETS is None, reason="ultralytics sample images not installed")


def edgedet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def resave(tmp_path: Path, name: str, metadata: dict | None) -> Path:
    """The demo model re-saved with other metadata (or none)."""
    import torch

    module = torch.jit.load(str(DEMO_MODEL))
    out = tmp_path / name
    extra = {"config.txt": json.dumps(metadata)} if metadata is not None else {}
    module.save(str(out), _extra_files=extra)
    return out


def demo_metadata() -> dict:
    with zipfile.ZipFile(DEMO_MODEL) as zf:
        name = next(n for n in zf.namelist() if n.endswith("extra/config.txt"))
        return json.loads(zf.read(name))


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    import cv2

    path = tmp_path / "noise.jpg"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return path


def _bad_models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import torch

    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope.torchscript", "model file not found")
    junk = tmp_path / "junk.torchscript"
    junk.write_bytes(b"this is not a model at all\n" * 10)
    cases["not_zip"] = (junk, "not a TorchScript file (not a zip archive)")
    state = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, state)
    cases["state_dict"] = (state, "export it first with `edgedet export`")
    cases["ultralytics_pt"] = (DEMO_WEIGHTS, "Ultralytics checkpoint, not a TorchScript model")
    cases["no_metadata"] = (resave(tmp_path, "nometa.torchscript", None), "no model metadata")
    meta = demo_metadata()
    meta["names"] = {"0": "a", "1": "b", "2": "c"}
    mismatch = resave(tmp_path, "classes.torchscript", meta)
    cases["class_mismatch"] = (mismatch, "outputs 2 classes but its metadata names 3")
    cases["directory"] = (tmp_path, "not a regular file")
    return cases


@pytest.mark.parametrize(
    "case", ["missing", "not_zip", "state_dict", "ultralytics_pt", "no_metadata", "class_mismatch", "directory"]
)
def test_bad_model_one_line_error(tmp_path: Path, image: Path, case: str):
    path, message = _bad_models(tmp_path)[case]
    if not path.exists() and case == "ultralytics_pt":
        pytest.fail(f"{path} missing: run `make model` first")
    result = edgedet("detect", str(image), "--model", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and str(path) in errors[0], result.stderr
    assert result.stdout == ""


def test_torch_version_mismatch_is_logged(tmp_path: Path, image: Path):
    meta = demo_metadata()
    meta["edgedet"]["torch"] = "1.13.0"
    path = resave(tmp_path, "old.torchscript", meta)
    result = edgedet("detect", str(image), "--model", str(path))
    assert result.returncode == 0, result.stderr
    assert "exported with torch 1.13.0; running with torch" in result.stderr


@needs_assets
def test_detect_bus_and_unreadable_image(tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out_dir = tmp_path / "annotated"
    result = edgedet(
        "detect", str(ASSETS / "bus.jpg"), str(broken), str(ASSETS / "zidane.jpg"),
        "--model", str(DEMO_MODEL), "--save-annotated", str(out_dir),
    )
    assert result.returncode == 2
    assert f"error: {broken}: cannot read image" in result.stderr and "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == ["bus.jpg", "zidane.jpg"]  # the rest is still processed
    bus = records[0]
    assert (bus["width"], bus["height"], bus["model"]) == (810, 1080, "demo")
    assert len(bus["detections"]) >= 3 and all(d["label"] in ("Normal", "Fall") for d in bus["detections"])
    assert set(bus["timing_ms"]) == {"preprocess", "inference", "postprocess"}
    assert (out_dir / "bus.jpg").is_file() and (out_dir / "zidane.jpg").is_file()


@needs_assets
def test_classes_filter_and_bad_label():
    result = edgedet("detect", str(ASSETS / "bus.jpg"), "--model", str(DEMO_MODEL), "--classes", "Fall")
    assert result.returncode == 0 and json.loads(result.stdout)["detections"] == []
    result = edgedet("detect", str(ASSETS / "bus.jpg"), "--model", str(DEMO_MODEL), "--classes", "smoke")
    assert result.returncode == 2 and "unknown label 'smoke'" in result.stderr


def test_detect_half_on_the_cpu_is_refused_except_for_ncnn(tmp_path: Path, image: Path):
    result = edgedet("detect", str(image), "--model", str(DEMO_MODEL), "--half")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --half: fp16 needs --device cuda (on the CPU only an ncnn model has it)"
    assert result.stdout == ""


def test_detect_threads_must_be_positive(image: Path):
    result = edgedet("detect", str(image), "--model", str(DEMO_MODEL), "--threads", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --threads: expected a count >= 1 (got 0)"
