"""A measurement child: ``python -m edgedet.bench.children KIND SPEC_JSON RESULT_PATH``.

Started by ``edgedet.bench.spawn.run_child``, one at a time. Each kind imports only what it
measures, here and not before: the ``ultra`` child must import ultralytics before torch, as a
user's script would (it changes torch's thread settings on import).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedet.bench.spawn import (
    BenchError,
    CandidateSpec,
    EdgeSpec,
    LiveSpec,
    MotionSpec,
    UltraExportSpec,
    UltraSpec,
    load_spec,
)


def main(argv: Sequence[str]) -> int:
    kind, spec_text, out_path = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any]
    if kind == EdgeSpec.kind:
        from edgedet.bench.measure import measure_edge

        result = measure_edge(load_spec(EdgeSpec, spec_text))
    elif kind == LiveSpec.kind and load_spec(LiveSpec, spec_text).viewers:
        from edgedet.bench.viewers import measure_viewers

        result = measure_viewers(load_spec(LiveSpec, spec_text))
    elif kind == LiveSpec.kind:
        from edgedet.bench.pipeline import measure_live

        result = measure_live(load_spec(LiveSpec, spec_text))
    elif kind == UltraSpec.kind:
        from edgedet.bench.ultra import measure_ultra

        result = measure_ultra(load_spec(UltraSpec, spec_text))
    elif kind == CandidateSpec.kind:
        from edgedet.bench.candidate import measure_candidate

        result = measure_candidate(load_spec(CandidateSpec, spec_text))
    elif kind == MotionSpec.kind:
        from edgedet.bench.motion import measure_motion

        result = measure_motion(load_spec(MotionSpec, spec_text))
    elif kind == UltraExportSpec.kind:
        from edgedet.bench.ultra_export import export_ultra

        result = export_ultra(load_spec(UltraExportSpec, spec_text))
    else:
        raise BenchError(f"unknown bench child kind {kind!r} (expected edge, live, ultra, candidate, ultra-export)")
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
