"""JSON Schemas (draft 2020-12) of the MQTT messages edgedet publishes, shipped with the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``<name>.schema.json`` (``"detections"``, ``"event"``, ``"node_info"``, ``"stats"``,
    ``"feedback"``); a fresh dict per call.

    Raises FileNotFoundError naming the schemas that exist when ``name`` is not one of them.
    """
    files = resources.files(__name__)
    entry = files.joinpath(f"{name}.schema.json")
    if not entry.is_file():
        known = sorted(p.name.removesuffix(".schema.json") for p in files.iterdir()
                       if p.name.endswith(".schema.json"))
        raise FileNotFoundError(f"no JSON schema {name!r} in edgedet.schemas (expected one of {known})")
    schema: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
    return schema
