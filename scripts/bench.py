#!/usr/bin/env python3
"""Same as ``edgedet bench``: raw model vs edgedet pipeline vs Ultralytics, and live latency.

    .venv/bin/python scripts/bench.py --json bench.json        # full run (~15 min on 2 cores)
    .venv/bin/python scripts/bench.py --quick                  # smoke run
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgedet.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
