"""Export: traced-vs-eager check, metadata round trip, Ultralytics interoperability both ways."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgedet.model.export.trace import sha256_file
from edgedet.model.torchscript import read_metadata
from tests.paths import DEMO_MODEL, DEMO_WEIGHTS, REPO, ultralytics_assets

pytestmark = pytest.mark.integration
ASSETS = ultralytics_assets()


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def detect(model: Path, image: Path) -> list[dict]:
    result = run("-m", "edgedet", "detect", str(image), "--model", str(model))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["detections"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("export") / "fall.torchscript"
    result = run("-m", "edgedet", "export", "--weights", str(DEMO_WEIGHTS), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_trace_matches_eager(exported):
    _, stdout = exported
    diff = float(re.search(r"traced vs eager \(fused\) max abs diff: (\S+)", stdout).group(1))
    assert diff < 1e-4
    boxes, scores = re.search(r"unfused checkpoint: boxes (\S+) px, scores (\S+)", stdout).groups()
    assert float(boxes) < 0.05 and float(scores) < 1e-4  # conv+bn folding: rounding only


def test_metadata_round_trip(exported):
    path, _ = exported
    info = read_metadata(path)
    assert info.names == ("Normal", "Fall")
    assert (info.imgsz, info.stride, info.task, info.batch, info.half) == ((640, 640), 32, "detect", 1, False)
    ours = info.extra["edgedet"]
    assert ours["source_sha256"] == sha256_file(DEMO_WEIGHTS)
    import torch

    assert ours["torch"] == torch.__version__ and ours["exported_at"] and ours["version"]
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_bad_imgsz_fails_without_output(tmp_path: Path):
    out = tmp_path / "bad.torchscript"
    result = run("-m", "edgedet", "export", "--weights", str(DEMO_WEIGHTS), "--imgsz", "630", "-o", str(out))
    assert result.returncode == 2 and "multiple of the model stride 32" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_weights(tmp_path: Path):
    result = run("-m", "edgedet", "export", "--weights", str(tmp_path / "none.pt"))
    assert result.returncode == 2 and "--weights: file not found" in result.stderr


def test_half_export_small_input(tmp_path: Path):
    """fp16 path on CPU (slow convolutions, so a small input): metadata says half, detect runs in fp16."""
    out = tmp_path / "half.torchscript"
    result = run("-m", "edgedet", "export", "--weights", str(DEMO_WEIGHTS), "--half", "--imgsz", "160", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "fp16" in result.stdout
    info = read_metadata(out)
    assert info.half and info.imgsz == (160, 160)
    if ASSETS:
        assert isinstance(detect(out, ASSETS / "bus.jpg"), list)


@pytest.mark.skipif(ASSETS is None, reason="ultralytics not installed")
def test_ultralytics_export_loads_in_edgedet(tmp_path: Path):
    weights = tmp_path / "best.pt"
    shutil.copy(DEMO_WEIGHTS, weights)
    code = (
        "from ultralytics import YOLO; import sys; "
        "print(YOLO(sys.argv[1]).export(format='torchscript', imgsz=640, verbose=False))"
    )
    result = run("-c", code, str(weights))
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = weights.with_suffix(".torchscript")
    assert theirs.is_file()
    assert read_metadata(theirs).names == ("Normal", "Fall")
    ours = detect(DEMO_MODEL, ASSETS / "bus.jpg")
    got = detect(theirs, ASSETS / "bus.jpg")
    assert len(got) == len(ours)
    for a, b in zip(got, ours, strict=True):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 0.01
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) < 1.0
