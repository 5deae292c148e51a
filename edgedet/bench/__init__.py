"""``edgedet bench``: raw model vs the edgedet pipeline vs Ultralytics, and live latency, on this box.

Every measurement runs in a child process (``edgedet.bench.children``), one at a time. torch's
thread settings are process-wide (and importing ultralytics changes them), and two torch processes
at once on a small box slow each other down many times over, so the parent imports neither torch
nor ultralytics and never runs two children together.

Throughput is measured result to result: ``(n - 1) / (t_last - t_first)`` over the ``n`` frames,
for the pipeline and for Ultralytics alike (model loading, warm-up and the first frame's latency
are excluded from both).

Sections: ``raw`` (forward only), ``pipeline`` (the daemon's own FrameHub, CameraSet and WorkerPool
on the file with back-pressure, counting sink, no MQTT), ``ultralytics``
(``YOLO(...).predict(stream=True)``), ``live`` (a real-time 25 fps source: end-to-end latency,
frame age, drops, per-stage medians), ``rect`` (optional aspect-matched model), ``ratios`` and
``targets``. ``--motion`` runs only ``edgedet.bench.motion`` (detect.mode always vs motion on the
generated clips, the motion measure's cost, cameras per mode).

Parent side: ``options`` (flags), ``runner`` (the rounds), ``live`` (the RTSP test server and the
live row), ``machine`` (box info), ``report`` (medians, ratios, targets, table), ``spawn`` (specs
and starting a child). Child side: ``children`` (entry), ``measure`` (raw forward, serial costs),
``pipeline`` (the pipeline rows), ``ultra`` (Ultralytics rows).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from edgedet.bench.motion import format_motion, run_motion
from edgedet.bench.options import build_parser, resolve_options
from edgedet.bench.report import format_report
from edgedet.bench.runner import run_bench
from edgedet.errors import EdgedetError, report
from edgedet.logs import setup_logging

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """``edgedet bench`` / ``scripts/bench.py``: run, print the table, write ``--json``."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        setup_logging("INFO")
    try:
        opts = resolve_options(args)
        if opts.motion:  # edgedet.bench.motion: always vs motion on the generated clips
            result = run_motion(opts.model, opts.video.parent, opts.video, opts.min_interval_s, opts.max_interval_s,
                                opts.threads)
        else:
            result = run_bench(opts)
    except EdgedetError as exc:
        return report(exc)
    except KeyboardInterrupt:
        return 130
    print(format_motion(result) if opts.motion else format_report(result), flush=True)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", opts.json_path)
    return 0
