#!/usr/bin/env bash
# Run edgedet's GPU check in one go on a CUDA machine (see scripts/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" scripts/gpu_check.py "$@"
