"""What box the bench runs on, and how busy the rest of it is (Linux ``/proc``; None elsewhere)."""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CpuSnapshot = tuple[float, float, float]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        else:
            # Arm boards (Pi, Jetson) name no CPU model in /proc/cpuinfo: the board's device-tree name.
            model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace").strip()
            if model:
                cpu = f"{model} ({platform.machine()})"
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count() or 1,
        "cores_usable": usable,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def module_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_snapshot() -> CpuSnapshot | None:
    """(monotonic s, busy CPU s of the whole machine, CPU s of this process and its waited-for children)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    t = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def other_cpu_pct(start: CpuSnapshot | None, end: CpuSnapshot | None, cores: int) -> float | None:
    """CPU used by processes other than the bench and its children, in % of the whole machine."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    other = (end[1] - start[1]) - (end[2] - start[2])
    return round(max(0.0, 100.0 * other / ((end[0] - start[0]) * cores)), 1)


def warn_if_busy(cores: int, probe_s: float = 1.0) -> None:
    start = cpu_snapshot()
    threading.Event().wait(probe_s)  # a bounded pause to sample /proc/stat over
    busy = other_cpu_pct(start, cpu_snapshot(), cores)
    if busy is not None and busy > 10.0:
        log.warning("other processes are using %.0f%% of the CPU right now: the numbers will be noisy", busy)


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def process_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process and its waited-for children (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parts = stat.rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in parts[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")
