"""scripts/soak.py: a short soak of the real daemon (CI), and its verdict rules on made-up samples."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import REPO, tail

pytestmark = pytest.mark.integration

SCRIPT = REPO / "scripts" / "soak.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgedet_soak_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak = _load_script()


# --------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_short_soak_passes(tmp_path: Path, assets) -> None:
    """1.5 min of back-to-back frames, a sample every 5 s, baseline at 30 s: no leak, no trend."""
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "1.5", "--interval", "5", "--warmup", "30",
         "--clip", str(assets.clip), "--json", str(out), "--workdir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    elapsed = time.monotonic() - t0
    report = f"exit {proc.returncode} after {elapsed:.0f} s\n{tail(proc.stdout, 60)}\n{tail(proc.stderr)}"
    assert proc.returncode == 0, report
    data = json.loads(out.read_text())
    verdict = data["verdict"]
    assert verdict["pass"] is True and verdict["failures"] == [], report
    for check in ("rss", "threads", "fds", "p99", "metrics", "mqtt", "exit"):
        assert verdict[check]["ok"] is True, (check, verdict[check])
    assert verdict["exit"]["code"] == 0
    assert verdict["dropped_main"] == 0 and verdict["bad_messages"] == 0
    assert verdict["samples_after_warmup"] >= 12
    samples = data["samples"]
    assert len(samples) == 18, report  # 90 s / 5 s
    assert all(s["frames"] > 0 and s["msgs"] > 0 and s["p99_ms"] > 0 for s in samples), report
    assert elapsed < 150, report
    print(tail(proc.stdout, 12))


# --------------------------------------------------------------------------- the rules


def samples(n: int = 24, interval: float = 5.0, **series: Any) -> list[Any]:
    """``n`` flat, healthy samples; a keyword maps a field to a function of the index."""
    base = {"rss_mib": 900.0, "threads": 16, "fds": 12, "frames": 50, "fps": 10.0, "msgs": 50,
            "p99_ms": 200.0, "p99h_ms": 200.0, "dropped": 0, "load1": 1.0}
    out = []
    for i in range(n):
        values = {k: (series[k](i) if k in series else v) for k, v in base.items()}
        out.append(soak.Sample(t_s=(i + 1) * interval, **values))
    return out


def noisy(i: int) -> float:
    return 200.0 * (1 + 0.25 * math.sin(i * 2.3))  # +-25 %, no trend


@pytest.mark.parametrize(
    ("series", "failure"),
    [
        ({}, None),
        ({"p99_ms": noisy}, None),
        ({"p99_ms": lambda i: 1000.0 if i == 22 else noisy(i)}, None),  # one slow interval near the end
        ({"threads": lambda i: 16 + (i == 12) * 2, "fds": lambda i: 12 + (i % 2)}, None),  # transients
        ({"rss_mib": lambda i: 900.0 * (1 + 0.01 * i)}, "RSS grew"),
        ({"threads": lambda i: 16 + i // 6}, "threads grew"),
        ({"fds": lambda i: 12 + i // 4}, "fds grew"),
        ({"p99_ms": lambda i: noisy(i) * (1 + i / 12)}, "p99 trends upward"),
        ({"frames": lambda i: 0 if i == 15 else 50}, "no frame processed"),
        ({"frames": lambda i: None if i == 15 else 50}, "/metrics did not answer"),
        ({"msgs": lambda i: 20}, "MQTT detections messages received"),
    ],
    ids=["flat", "noise", "spike", "transients", "rss-leak", "thread-leak", "fd-leak", "p99-trend",
         "stall", "scrape", "mqtt-lag"],
)
def test_verdict_rules(series: dict[str, Any], failure: str | None) -> None:
    verdict = soak.judge(samples(**series), warmup=30.0)
    if failure is None:
        assert verdict["pass"], verdict["failures"]
    else:
        assert not verdict["pass"] and any(failure in f for f in verdict["failures"]), verdict["failures"]


def test_baseline_is_the_first_sample_after_warmup() -> None:
    # Growth during the warm-up (allocator caches filling) does not count.
    verdict = soak.judge(samples(rss_mib=lambda i: 500.0 + 100 * min(i, 5)), warmup=30.0)
    assert verdict["pass"], verdict["failures"]
    assert verdict["baseline_t_s"] == 30.0 and verdict["rss"]["baseline_mib"] == 1000.0
    assert verdict["rss"]["start_mib"] == 500.0


def test_too_few_samples_after_warmup_fail() -> None:
    verdict = soak.judge(samples(n=8), warmup=30.0)
    assert not verdict["pass"] and "sample(s) after the 30 s warm-up" in verdict["failures"][0]


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.99, {0.1: 0, 0.2: 50, 0.3: 100, math.inf: 100}, 0.298),
        (0.5, {0.1: 10, 0.2: 10, math.inf: 20}, 0.1),
        (0.5, {0.1: 0, 0.2: 0, math.inf: 4}, 0.2),  # in +Inf: the highest finite bound
        (0.99, {0.1: 0, math.inf: 0}, None),
    ],
)
def test_histogram_quantile(q: float, buckets: dict[float, float], expected: float | None) -> None:
    got = soak.quantile(q, buckets)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_nearest_rank_p99_is_an_observed_value() -> None:
    values = [float(v) for v in range(1, 101)]
    assert soak.nearest_rank(0.99, values) == 99.0
    assert soak.nearest_rank(0.99, [5.0]) == 5.0
    assert soak.nearest_rank(0.99, []) is None


def test_sample_fields_are_what_the_json_carries() -> None:
    names = {f.name for f in dataclasses.fields(soak.Sample)}
    assert {"t_s", "rss_mib", "threads", "fds", "fps", "p99_ms"} <= names
