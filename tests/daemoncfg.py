"""Writing daemon config files for integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers import free_port
from tests.paths import DEMO_MODEL


def write_config(
    tmp_path: Path,
    cameras: dict[str, dict[str, Any]],
    mqtt_port: int,
    *,
    metrics_port: int | None = None,
    node_id: str = "testnode",
    name: str = "edgedet.yaml",
    **sections: Any,
) -> tuple[Path, int]:
    """A config file for ``cameras`` against a broker on ``mqtt_port``; returns (path, metrics port)."""
    metrics_port = metrics_port or free_port()
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "node_id": node_id,
        "log_level": "INFO",
        "state_dir": str(state),
        "cameras": cameras,
        "model": {"path": str(DEMO_MODEL)},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive": 10},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, metrics_port


def frames_clip(frames: Path, out: Path, count: int) -> Path:
    """An MP4 (25 fps, 1280x720) of the first ``count`` demo frames, for a file camera."""
    import cv2

    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25, (1280, 720))
    for jpg in sorted(frames.glob("*.jpg"))[:count]:
        writer.write(cv2.imread(str(jpg)))
    writer.release()
    return out
