"""The live row, parent side: a real-time source for the live child -- the GStreamer RTSP test
server (``rtsp_server.py``, shipped in this package, run by the system python with PyGObject) when
it can run, else the video paced at its fps -- and the row it measures."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from edgedet.bench.machine import process_cpu_s
from edgedet.bench.options import Options
from edgedet.bench.spawn import BenchError, LiveSpec, run_child
from edgedet.errors import InputError

log = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
LIVE_FPS = 25
READY_TIMEOUT_S = 30.0
# The RTSP test server ships in this package (an installed edgedet has no scripts/ folder); the
# tests' RTSP fixture runs this same file.
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")




def run_live(opts: Options) -> dict[str, Any]:
    def spec(source: Literal["rtsp", "file"], url: str) -> LiveSpec:
        return LiveSpec(model=str(opts.model), source=source, url=url,
                        seconds=opts.live_seconds, warmup_s=opts.live_warmup_s, workers=opts.workers,
                        threads=opts.threads, queue_size=opts.queue_size)

    want_rtsp = opts.live_source in ("auto", "rtsp")
    timeout = 120.0 + opts.live_seconds + opts.live_warmup_s
    why_not = rtsp_unavailable(RTSP_SCRIPT, opts.live_frames) if want_rtsp else "--live-source file"
    if opts.live_source == "rtsp" and why_not:
        raise InputError(f"--live-source rtsp: {why_not}")
    if why_not is None and opts.live_frames is not None:
        with RtspServer(RTSP_SCRIPT, opts.live_frames) as (url, pid):
            log.info("live: %s for %g s", url, opts.live_seconds)
            cpu0, t0 = process_cpu_s(pid), time.monotonic()
            result = run_child(spec("rtsp", url), timeout=timeout)
            cpu1, t1 = process_cpu_s(pid), time.monotonic()
        result["source"] = "rtsp"
        result["source_detail"] = (
            f"GStreamer RTSP test server (edgedet/bench/{RTSP_SCRIPT.name}, {LIVE_FPS} fps H.264, same box)")
        if cpu0 is not None and cpu1 is not None:
            result["rtsp_server_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / max(t1 - t0, 1e-9), 1)
        return result
    log.info("live: %s paced at its fps for %g s (RTSP not used: %s)", opts.video, opts.live_seconds, why_not)
    result = run_child(spec("file", str(opts.video)), timeout=timeout)
    result["source"] = "file"
    result["source_detail"] = f"file with realtime pacing, looped (RTSP not used: {why_not})"
    return result


def run_viewers(opts: Options) -> dict[str, Any]:
    """The live-viewers row: the video paced at its fps, pipeline fps without and with
    ``opts.viewers`` MJPEG viewers of the web console, alternating in one child."""
    spec = LiveSpec(model=str(opts.model), source="file", url=str(opts.video), seconds=opts.live_seconds,
                    warmup_s=opts.live_warmup_s, workers=opts.workers, threads=opts.threads,
                    queue_size=opts.queue_size, viewers=opts.viewers)
    log.info("viewers: %d MJPEG viewer(s) on and off, %g s", opts.viewers, 2 * opts.live_seconds)
    return run_child(spec, timeout=180.0 + 2 * opts.live_seconds + opts.live_warmup_s)


def rtsp_unavailable(script: Path, frames: Path | None) -> str | None:
    """Why the RTSP test server cannot serve ``frames`` here, or None when it can."""
    if not script.is_file():
        return f"{script} not found"
    if frames is None:
        return "no JPEG sequence (frames/00000.jpg next to the video, or --live-frames)"
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True, timeout=30,
    )
    return None if probe.returncode == 0 else f"{SYSTEM_PYTHON} lacks PyGObject/GstRtspServer"


class RtspServer:
    """The GStreamer RTSP test server on a kernel-picked port; stopped by PID on exit."""

    def __init__(self, script: Path, frames: Path) -> None:
        self.cmd = [SYSTEM_PYTHON, str(script), "--port", "0", "--frames", str(frames), "--fps", str(LIVE_FPS)]
        self._tmp = tempfile.TemporaryDirectory(prefix="edgedet-bench-rtsp-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> tuple[str, int]:
        out_path = Path(self._tmp.name) / "stdout"
        with open(out_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            text = out_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("READY "):
                    return line.split()[1], self.proc.pid
            try:
                code = self.proc.wait(timeout=0.05)  # also the bounded wait between looks
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise BenchError(f"RTSP test server printed no READY line within {READY_TIMEOUT_S:g} s") from None
                continue
            tail = " | ".join(text.strip().splitlines()[-3:])
            self.__exit__()
            raise BenchError(f"RTSP test server exited with code {code}: {tail}")

    def __exit__(self, *_exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._tmp.cleanup()
