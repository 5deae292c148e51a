#!/usr/bin/env python3
"""Render the main panels of the edgedet Grafana dashboard to a PNG, straight from Prometheus.

For the README screenshot and for checking the dashboard without a Grafana server. The panel
queries, legends, units and layout are read from ``config/grafana/edgedet-dashboard.json``, so
the picture shows what the dashboard would show. Grafana variables are filled in like Grafana
does: ``$camera``/``$instance``/``$job``/``$node`` from the options (regexes, default ``.*``),
``$__rate_interval`` as max(step + scrape interval, 4 x scrape interval).

    .venv/bin/python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --minutes 15 --out docs/dashboard.png

Exit codes: 0 ok, 1 a panel had no data (unless --allow-empty) or Prometheus failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "config" / "grafana" / "edgedet-dashboard.json"
#: Dashboard panels rendered, by title prefix, in dashboard order.
MAIN_PANELS = (
    "Frames per second",
    "End-to-end latency",
    "Inference latency",
    "Frame age",
    "Camera up",
)
# Grafana's dark theme.
BG, PANEL_BG, FG, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0")


@dataclass
class Series:
    legend: str
    times: list[float]
    values: list[float]


@dataclass
class Panel:
    title: str
    kind: str
    unit: str
    grid: dict[str, int]
    series: list[Series] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


class PrometheusError(Exception):
    pass


def parse_duration(text: str) -> float:
    """``15s`` / ``1m`` / ``1h30m`` / ``500ms`` -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration such as 15s, 1m or 1h (got {text!r})")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


def prom_duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` (longest names first, so ``$__rate_interval`` wins)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def legend_text(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise PrometheusError(f"{expr}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PrometheusError(f"cannot reach Prometheus at {base}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def walk_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in panels:
        out.append(p)
        out += walk_panels(p.get("panels", []))
    return out


def select_panels(dashboard: dict[str, Any], titles: tuple[str, ...]) -> list[dict[str, Any]]:
    chosen = []
    for title in titles:
        found = [p for p in walk_panels(dashboard["panels"])
                 if p.get("type") != "row" and p.get("title", "").startswith(title)]
        if not found:
            raise SystemExit(f"error: no panel titled {title!r}... in the dashboard")
        chosen.append(found[0])
    return sorted(chosen, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


def fetch(base: str, spec: dict[str, Any], variables: dict[str, str], start: float, end: float,
          step: float) -> Panel:
    defaults = spec.get("fieldConfig", {}).get("defaults", {})
    steps = defaults.get("thresholds", {}).get("steps", [])
    style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
    panel = Panel(
        title=spec["title"], kind=spec["type"], unit=defaults.get("unit", ""), grid=spec["gridPos"],
        thresholds=[s["value"] for s in steps if s.get("value") is not None] if style != "off" else [],
    )
    for target in spec.get("targets", []):
        expr = substitute(target["expr"], variables)
        for item in query_range(base, expr, start, end, step):
            points = [(float(t), float(v)) for t, v in item["values"]]
            panel.series.append(Series(
                legend_text(target.get("legendFormat", ""), item["metric"]),
                [t for t, _ in points], [v for _, v in points],
            ))
    return panel


def format_axis(unit: str) -> tuple[Any, str]:
    """A matplotlib tick formatter and a y label for a Grafana unit."""
    from matplotlib.ticker import FuncFormatter

    if unit == "s":
        def seconds(v: float, _pos: object) -> str:
            return f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.2f} s"

        return FuncFormatter(seconds), ""
    suffix = unit[len("suffix:"):] if unit.startswith("suffix:") else ""
    return FuncFormatter(lambda v, _pos: f"{v:g}"), suffix.strip()


def flow_layout(panels: list[Panel]) -> list[tuple[int, int, int, int]]:
    """Grafana-like (x, y, w, h) cells: dashboard order and widths, rows filled left to right.

    Panels of the dashboard that are not rendered leave no holes: a row ends when the next panel
    does not fit, and its last panel is stretched to the full 24 columns.
    """
    cells: list[list[int]] = []
    x = y = row_h = 0
    for panel in panels:
        w, h = panel.grid["w"], panel.grid["h"]
        if panel.kind == "state-timeline":  # one bar per series: no need for the full height
            h = min(h, 3 + len({s.legend for s in panel.series}))
        if x + w > 24 and x > 0:
            cells[-1][2] = 24 - cells[-1][0]
            x, y, row_h = 0, y + row_h, 0
        cells.append([x, y, w, h])
        x, row_h = x + w, max(row_h, h)
    if cells:
        cells[-1][2] = 24 - cells[-1][0]
    for cell in cells:  # panels of one row share its height
        cell[3] = max(c[3] for c in cells if c[1] == cell[1])
    return [(c[0], c[1], c[2], c[3]) for c in cells]


def draw(panels: list[Panel], out: Path, title: str, start: float, end: float, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    cells = flow_layout(panels)
    width_in, unit_in, header_in = 16.0, 0.42, 0.5
    rows = max((c[1] + c[3] for c in cells), default=1)
    height_in = header_in + rows * unit_in
    # Padding inside each cell, in inches: y tick labels, right gap, title, x tick labels.
    pad_l, pad_r, pad_t, pad_b = 0.75, 0.15, 0.35, 0.35
    fig = plt.figure(figsize=(width_in, height_in), facecolor=BG)
    fig.text(0.006, 1 - 0.3 / height_in, title, color=FG, fontsize=13, fontweight="bold", va="center")
    for panel, (x, y, w, h) in zip(panels, cells, strict=True):
        left_in, top_in = x * width_in / 24, header_in + y * unit_in
        rect = (
            (left_in + pad_l) / width_in,
            1 - (top_in + h * unit_in - pad_b) / height_in,
            (w * width_in / 24 - pad_l - pad_r) / width_in,
            (h * unit_in - pad_t - pad_b) / height_in,
        )
        ax = fig.add_axes(rect)
        ax.set_facecolor(PANEL_BG)
        ax.set_title(panel.title, color=FG, loc="left", fontsize=10)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=FG, labelsize=8)
        ax.grid(True, color=GRID, linewidth=0.6)
        ax.set_xlim(float(mdates.date2num(dt.datetime.fromtimestamp(start))),
                    float(mdates.date2num(dt.datetime.fromtimestamp(end))))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        if not panel.series:
            ax.text(0.5, 0.5, "No data", color=FG, ha="center", va="center", transform=ax.transAxes)
        elif panel.kind == "state-timeline":
            _draw_timeline(ax, panel)
        else:
            _draw_lines(ax, panel)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor=BG)
    plt.close(fig)


def _draw_lines(ax: Any, panel: Panel) -> None:
    top = 0.0
    for i, s in enumerate(sorted(panel.series, key=lambda s: s.legend)):
        xs = [dt.datetime.fromtimestamp(t) for t in s.times]
        ys = [v if math.isfinite(v) else math.nan for v in s.values]
        top = max([top, *(v for v in ys if not math.isnan(v))])
        ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linewidth=1.3, label=s.legend)
    ymax = top * 1.25 or 1.0
    formatter, label = format_axis(panel.unit)
    for value in panel.thresholds:  # like Grafana: a threshold does not stretch the axis
        if value <= ymax:
            ax.axhline(value, color="#f2495c", linestyle="--", linewidth=1)
        else:
            ax.text(0.995, 0.97, f"threshold {formatter(value, None)} (off scale)", color="#f2495c",
                    fontsize=7, ha="right", va="top", transform=ax.transAxes)
    ax.yaxis.set_major_formatter(formatter)
    if label:
        ax.set_ylabel(label, color=FG, fontsize=8)
    ax.set_ylim(0, ymax)
    ax.legend(loc="upper left", fontsize=7, ncol=4, frameon=False, labelcolor=FG)


def _draw_timeline(ax: Any, panel: Panel) -> None:
    names = sorted({s.legend for s in panel.series})
    for row, name in enumerate(names):
        for s in (s for s in panel.series if s.legend == name):
            for i, (t, v) in enumerate(zip(s.times, s.values, strict=True)):
                t_next = s.times[i + 1] if i + 1 < len(s.times) else t
                if t_next <= t:
                    continue
                ax.barh(row, (t_next - t) / 86400, left=dt.datetime.fromtimestamp(t), height=0.8,
                        color="#73bf69" if v >= 1 else "#f2495c", linewidth=0)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(False)
    ax.text(0.995, 0.02, "green UP / red DOWN", color=FG, fontsize=7, ha="right", transform=ax.transAxes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    ap.add_argument("--dashboard", type=Path, default=DASHBOARD)
    ap.add_argument("--minutes", type=float, default=15.0, help="time range ending now (default 15)")
    ap.add_argument("--step", type=parse_duration, default=None, help="query step (default: range / 240)")
    ap.add_argument("--scrape-interval", type=parse_duration, default=15.0,
                    help="Prometheus scrape interval, for $__rate_interval (default 15s)")
    ap.add_argument("--camera", default=".*", help="regex for $camera (default .*)")
    ap.add_argument("--instance", default=".*", help="regex for $instance (default .*)")
    ap.add_argument("--node", default=".*", help="regex for $node (default .*)")
    ap.add_argument("--job", default=".*", help="regex for $job (default .*)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    ap.add_argument("--dpi", type=int, default=80)
    ap.add_argument("--allow-empty", action="store_true", help="exit 0 even when a panel has no data")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error("--minutes must be positive")

    dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    end = time.time()
    start = end - args.minutes * 60
    step = args.step or max(1.0, (end - start) / 240)
    rate_interval = max(step + args.scrape_interval, 4 * args.scrape_interval)
    variables = {
        "camera": args.camera, "instance": args.instance, "job": args.job, "node": args.node,
        "__rate_interval": prom_duration(rate_interval), "__interval": prom_duration(step),
        "__range": prom_duration(end - start),
    }
    base = args.prometheus.rstrip("/")
    try:
        panels = [fetch(base, p, variables, start, end, step) for p in select_panels(dashboard, MAIN_PANELS)]
    except PrometheusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    title = f"{dashboard.get('title', 'edgedet')} - last {args.minutes:g} min"
    draw(panels, args.out, title, start, end, args.dpi)
    empty = [p.title for p in panels if not p.series]
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB, {len(panels)} panels)")
    if empty:
        print(f"{'warning' if args.allow_empty else 'error'}: no data for: {', '.join(empty)}", file=sys.stderr)
        return 0 if args.allow_empty else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
