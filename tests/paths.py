"""Paths shared by tests (no fixtures here; see conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "models" / "demo.torchscript"
DEMO_WEIGHTS = REPO / ".cache" / "demo-model" / "best.pt"


def ultralytics_assets() -> Path | None:
    """The sample images shipped in the ultralytics wheel, found without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "assets"
    return path if (path / "bus.jpg").is_file() else None
