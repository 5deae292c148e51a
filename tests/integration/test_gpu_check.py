"""scripts/gpu_check.py runs the CUDA code path's structure on a CPU (CI has no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.integration


def test_gpu_check_quick_on_cpu(tmp_path: Path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu"
    assert set(data["raw"]) == {"1", "2"} and all(v > 0 for v in data["raw"].values())
    assert [r["cameras"] for r in data["pipeline"]] == [1, 2]
    assert data["pipeline"][0]["fps"] > 0
    assert "raw forward batch  1" in result.stdout and "pipeline  2 camera(s)" in result.stdout


def test_gpu_check_without_cuda_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cuda"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "CUDA is not available" in result.stderr
