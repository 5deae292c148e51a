"""The Grafana dashboard and the Prometheus config/alerts against a real Prometheus scraping edgedet.

One module-scoped stack: mosquitto and Prometheus on free loopback ports, the daemon as a
subprocess (``python -m edgedet run``) on the looping demo clip. Prometheus scrapes every 1 s and
evaluates the shipped alert rules every 1 s. Then every PromQL expression of
``config/grafana/edgedet-dashboard.json`` (panel targets and template variables) and of
``config/prometheus/edgedet-alerts.yml`` runs through ``/api/v1/query`` and must return data, and
so must every metric it names: a metric edgedet does not export fails here.

Substitutions (the files keep their real windows): Grafana variables only. ``$job``,
``$instance`` and ``$camera`` become the real job, target and camera; ``$__rate_interval`` and
``$__interval`` become ``15s``. Literal windows (``[1m]``, ``[5m]``, ``[10m]``) are kept: rate()
and friends need two samples inside the window, not a full window, so the stack waits (with a
deadline) until Prometheus holds a few samples of every series after the first processed frame.
Alert expressions are true only when something is wrong, so their comparisons with numbers are
stripped (``x == 0`` -> ``x``; ``a > 0 and b > 1000`` -> ``a and b``) and the rule health reported
by ``/api/v1/rules`` must be ``ok``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from edgedet.metrics import Metrics
from tests.helpers import (
    MOSQUITTO,
    DaemonProcess,
    MosquittoBroker,
    free_port,
    is_ci,
    run_daemon,
    stop_daemon,
    stop_process,
    tail,
    wait_for,
)

if TYPE_CHECKING:
    from tests.conftest import Assets

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "config" / "grafana" / "edgedet-dashboard.json"
PROM_CONFIG = REPO / "config" / "prometheus" / "edgedet.yml"
ALERTS = REPO / "config" / "prometheus" / "edgedet-alerts.yml"
MODEL = REPO / "models" / "demo.torchscript"
RENDER = REPO / "scripts" / "render_dashboard.py"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

CAMERA = "gate"
JOB = "edgedet"  # the job name of config/prometheus/edgedet.yml
#: What Grafana's interval variables become here (1 s scrapes; a few samples per window).
RATE_INTERVAL = "15s"
DEADLINE_S = 90.0  # daemon start + first samples; ~10 s on an idle 2-core box
#: Alerts that must be inactive while the stack is healthy.
QUIET_ALERTS = (
    "EdgedetDown", "EdgedetCameraDown", "EdgedetNoFramesProcessed", "EdgedetBrokerDisconnected", "EdgedetCameraFrozen",
)
EXPECTED_ALERTS = {*QUIET_ALERTS, "EdgedetHighLatency", "EdgedetOutboxGrowing"}


# --------------------------------------------------------------------------- expressions (pure)


@dataclass(frozen=True)
class Expr:
    """One PromQL expression of the dashboard or the alert rules, as written there."""

    where: str
    expr: str
    kind: str  # "target", "variable" or "rule"


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[Expr]:
    out = []
    for panel in walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append(Expr(f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"],
                                "target"))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
            out.append(Expr(f"variable ${var['name']}", query, "variable"))
    return out


def rule_exprs(doc: dict[str, Any]) -> list[Expr]:
    return [
        Expr(f"rule {rule.get('alert') or rule.get('record')}", " ".join(str(rule["expr"]).split()), "rule")
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana-style ``$name`` / ``${name}`` replacement, longest names first."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    if re.search(r"\$\{?\w", expr):
        raise ValueError(f"unsubstituted variable in {expr!r}")
    return expr


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<sel>.+)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<q>.+)\)\s*$", re.S)
_COMPARISON = re.compile(
    r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])"
)


def variable_query(query: str) -> tuple[str, str | None]:
    """A Grafana Prometheus variable query -> (instant query, label its series must carry)."""
    m = _LABEL_VALUES.match(query)
    if m:
        label = m.group("label")
        sel = m.group("sel")
        return (sel.strip(), label) if sel else (f'{{{label}=~".+"}}', label)
    m = _QUERY_RESULT.match(query)
    if m:
        return m.group("q").strip(), None
    raise ValueError(f"unsupported variable query {query!r} (expected label_values() or query_result())")


def strip_comparisons(expr: str) -> str:
    """``x == 0`` -> ``x``: an alert condition's series, which exist whether or not it fires."""
    return _COMPARISON.sub("", expr)


def to_query(e: Expr, variables: dict[str, str]) -> tuple[str, str | None]:
    """What to send to /api/v1/query for ``e``, and a label the result must carry (or None)."""
    if e.kind == "variable":
        return variable_query(substitute(e.expr, variables))
    if e.kind == "rule":
        return strip_comparisons(e.expr), None
    return substitute(e.expr, variables), None


def metric_names(expr: str) -> set[str]:
    """The metrics an expression reads: every ``edgedet_*`` name, and ``up`` when selected."""
    names = set(re.findall(r"\bedgedet_\w+", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


def exported_metrics() -> set[str]:
    """Sample names edgedet/metrics.py exports (built in a fresh registry, as the daemon does)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
                "info": ("_info",), "summary": ("", "_count", "_sum")}
    registry = CollectorRegistry()
    Metrics(registry)
    return {family.name + s for family in registry.collect() for s in suffixes.get(family.type, ("",))}


# --------------------------------------------------------------------------- Prometheus client + checker


class Prom:
    """A minimal /api/v1 client (urllib: no threads)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.base}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:  # bad queries answer 400/422 with a JSON error
            body = json.loads(exc.read() or b"{}") or {"status": "error", "error": f"HTTP {exc.code}"}
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def result(self, expr: str) -> list[dict[str, Any]]:
        body = self.query(expr)
        return body["data"]["result"] if body.get("status") == "success" else []


@dataclass
class Problem:
    where: str
    query: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}\n    query: {self.query}"


def check_expr(e: Expr, prom: Prom, variables: dict[str, str], seen: dict[str, bool] | None = None) -> list[Problem]:
    """Problems of one expression: query error, empty result, missing label, or a metric with no data."""
    seen = {} if seen is None else seen
    try:
        query, label = to_query(e, variables)
    except ValueError as exc:
        return [Problem(e.where, e.expr, str(exc))]
    problems = []
    for name in sorted(metric_names(query)):
        if name not in seen:
            seen[name] = bool(prom.result(f'{name}{{job="{variables["job"]}"}}'))
        if not seen[name]:
            problems.append(Problem(e.where, query, f"metric {name} has no series"))
    body = prom.query(query)
    if body.get("status") != "success":
        problems.append(Problem(e.where, query, f"query failed: {body.get('errorType')}: {body.get('error')}"))
    elif not body["data"]["result"]:
        problems.append(Problem(e.where, query, "empty result"))
    elif label is not None and not all(label in s["metric"] for s in body["data"]["result"]):
        problems.append(Problem(e.where, query, f"series without the {label!r} label"))
    return problems


def check_all(exprs: list[Expr], prom: Prom, variables: dict[str, str]) -> list[Problem]:
    seen: dict[str, bool] = {}
    return [p for e in exprs for p in check_expr(e, prom, variables, seen)]


# --------------------------------------------------------------------------- processes


def _missing(reason: str) -> None:
    """Skip on a developer machine; fail on CI, where every system dependency must be present."""
    if is_ci():
        pytest.fail(f"{reason} (CI is set: run scripts/ci-deps.sh)", pytrace=False)
    pytest.skip(f"{reason} (run scripts/ci-deps.sh as root)")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def prometheus_config(metrics_port: int, alerts: Path) -> dict[str, Any]:
    """The shipped edgedet.yml, scraping and evaluating every second, targeting the test daemon."""
    cfg: dict[str, Any] = yaml.safe_load(PROM_CONFIG.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(alerts)]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == JOB]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    labels = job["static_configs"][0].get("labels", {})  # the node label the dashboard's $node reads
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": labels}]
    return cfg


@dataclass
class Stack:
    prom: Prom
    variables: dict[str, str]


def _ready(prom: Prom) -> bool:
    checks = (
        "count_over_time(edgedet_detections_total[1m]) >= 3",  # a few scrapes after the first detection
        "increase(edgedet_frames_processed_total[1m]) > 0",
        "edgedet_camera_up == 1",
        "edgedet_mqtt_connected == 1",
    )
    if not http_ok(f"{prom.base}/-/ready") or not all(prom.result(q) for q in checks):
        return False
    rules = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    return bool(rules) and all(r["health"] != "unknown" for r in rules)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, assets: Assets) -> Iterator[Stack]:
    """mosquitto, the daemon on the looping demo clip, and Prometheus scraping it every second."""
    for tool in (Path(PROMETHEUS), MOSQUITTO):
        if not tool.is_file():
            _missing(f"{tool} not installed (apt-get install prometheus mosquitto)")
    if not MODEL.is_file():
        pytest.skip(f"{MODEL.relative_to(REPO)} is missing: run `make model`")
    tmp = tmp_path_factory.mktemp("prometheus")
    broker = MosquittoBroker(tmp / "mosquitto")
    daemon: DaemonProcess | None = None
    prometheus: subprocess.Popen[bytes] | None = None
    metrics_port, prom_port = free_port(), free_port()
    prom = Prom(f"http://127.0.0.1:{prom_port}")

    def logs() -> str:
        parts = [f"--- edgedet:\n{tail(daemon.output())}" if daemon else "",
                 f"--- prometheus:\n{tail((tmp / 'prometheus.log').read_text(errors='replace'))}"
                 if prometheus else "",
                 f"--- mosquitto:\n{tail(broker.log_text())}"]
        return "\n".join(p for p in parts if p)

    try:
        broker.start()
        (tmp / "state").mkdir()
        daemon_cfg = {
            "node_id": "promtest", "log_level": "INFO", "state_dir": str(tmp / "state"),
            "cameras": {CAMERA: {"url": str(assets.clip), "loop": True, "realtime": True}},
            "model": {"path": str(MODEL)},
            "mqtt": {"host": broker.host, "port": broker.port},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
        }
        (tmp / "edgedet.yaml").write_text(yaml.safe_dump(daemon_cfg))
        daemon = run_daemon(tmp / "edgedet.yaml")
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(metrics_port, ALERTS)))
        with open(tmp / "prometheus.log", "wb") as log:
            prometheus = subprocess.Popen(
                [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        procs = (daemon, prometheus, broker.proc)

        try:  # returns early when a process dies: reported below
            wait_for(lambda: any(p is None or p.poll() is not None for p in procs) or _ready(prom), DEADLINE_S,
                     "Prometheus to hold a few samples of every edgedet series", interval=0.2)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{logs()}")
        if any(p is None or p.poll() is not None for p in procs):
            pytest.fail(f"a process exited early\n{logs()}")
        variables = {"job": JOB, "node": ".*", "instance": f"127.0.0.1:{metrics_port}", "camera": CAMERA,
                     "__rate_interval": RATE_INTERVAL, "__interval": RATE_INTERVAL, "__range": "1m"}
        yield Stack(prom, variables)
    finally:
        if prometheus is not None:
            stop_process(prometheus)
        daemon_rc = stop_daemon(daemon) if daemon is not None else 0
        broker.stop()
    if daemon_rc != 0:
        pytest.fail(f"edgedet exited with {daemon_rc} on SIGTERM\n{logs()}")


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return data


ALL_EXPRS = dashboard_exprs(load_dashboard()) + rule_exprs(load_rules())


# --------------------------------------------------------------------------- static checks (no processes)


@pytest.mark.parametrize(("query", "expected"), [
    ("label_values(edgedet_build_info, job)", ("edgedet_build_info", "job")),
    ('label_values(m{job=~"x"}, camera)', ('m{job=~"x"}', "camera")),
    ("label_values(camera)", ('{camera=~".+"}', "camera")),
    ("query_result(sum(up))", ("sum(up)", None)),
])
def test_variable_queries_become_instant_queries(query: str, expected: tuple[str, str | None]) -> None:
    assert variable_query(query) == expected


def test_unsupported_variable_query_is_an_error() -> None:
    with pytest.raises(ValueError, match="unsupported variable query"):
        variable_query("metrics(edgedet_.*)")


@pytest.mark.parametrize(("expr", "expected"), [
    ("edgedet_camera_up == 0", "edgedet_camera_up"),
    ('up{job="edgedet"} == 0', 'up{job="edgedet"}'),
    ("rate(a[2m]) == 0 and on (camera) b == 1", "rate(a[2m]) and on (camera) b"),
    ("histogram_quantile(0.95, sum by (le) (rate(x_bucket{le!=\"0.5\"}[5m]))) > 2",
     "histogram_quantile(0.95, sum by (le) (rate(x_bucket{le!=\"0.5\"}[5m])))"),
    ("deriv(o[10m]) > 0 and o > 1e3", "deriv(o[10m]) and o"),
    ("absent(up)", "absent(up)"),
])
def test_strip_comparisons(expr: str, expected: str) -> None:
    assert strip_comparisons(expr) == expected


def test_substitute_fills_grafana_variables_and_rejects_leftovers() -> None:
    v = {"camera": "gate", "__rate_interval": "15s"}
    assert substitute('rate(x{camera=~"$camera"}[$__rate_interval])', v) == 'rate(x{camera=~"gate"}[15s])'
    assert substitute("x[${__rate_interval}]", v) == "x[15s]"
    with pytest.raises(ValueError, match="unsubstituted"):
        substitute('x{node="$node"}', v)


def test_dashboard_is_an_importable_grafana_export() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 38
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = list(walk_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        assert p.get("datasource") == ds, f"panel {p.get('title')!r}: datasource {p.get('datasource')}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['title']!r} gridPos {g}"
        for t in p.get("targets", []):
            assert t.get("datasource") == ds, f"panel {p['title']!r} target {t.get('refId')}"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    camera = variables["camera"]
    assert camera["datasource"] == ds
    assert camera["query"]["query"].startswith("label_values(edgedet_frames_captured_total")
    assert camera["query"]["query"].endswith(", camera)")
    assert camera["multi"] and camera["includeAll"] and camera["allValue"] == ".*"
    used = {m for e in dashboard_exprs(dash) for m in re.findall(r"\$\{?(\w+)", e.expr)}
    assert used <= set(variables) | {"__rate_interval", "__interval", "__range"}, used


def test_alert_rules_are_labelled_and_annotated() -> None:
    rules = [r for g in load_rules()["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        if "camera" in r["alert"].lower() or "camera" in r["expr"] or "end_to_end" in r["expr"]:
            text = r["annotations"]["summary"] + r["annotations"]["description"]
            assert "{{ $labels.camera }}" in text, r["alert"]


def unknown_metrics(exprs: list[Expr]) -> set[str]:
    return {m for e in exprs for m in metric_names(e.expr)} - exported_metrics() - {"up"}


def test_every_metric_used_is_exported_by_metrics_py() -> None:
    assert unknown_metrics(ALL_EXPRS) == set()


def with_bogus_metric(dash: dict[str, Any], in_or: bool = False) -> tuple[dict[str, Any], str]:
    """A copy of ``dash`` whose 'Frames per second' processed target reads a misspelt metric."""
    bogus = copy.deepcopy(dash)
    (panel,) = [p for p in walk_panels(bogus["panels"]) if p["title"].startswith("Frames per second")]
    (target,) = [t for t in panel["targets"] if "edgedet_frames_processed_total" in t["expr"]]
    wrong = target["expr"].replace("edgedet_frames_processed_total", "edgedet_frames_procesed_total")
    target["expr"] = f"{target['expr']} or {wrong}" if in_or else wrong
    return bogus, f"panel {panel['title']!r} target {target['refId']}"


def test_static_check_flags_a_bogus_metric() -> None:
    bogus, _ = with_bogus_metric(load_dashboard())
    assert unknown_metrics(dashboard_exprs(bogus)) == {"edgedet_frames_procesed_total"}


def test_promtool_accepts_config_and_rules(tmp_path: Path) -> None:
    if not Path(PROMTOOL).is_file():
        pytest.skip(f"{PROMTOOL} is not installed")
    for f in (PROM_CONFIG, ALERTS):  # a copy, with the rule file next to it as rule_files expects
        shutil.copy(f, tmp_path / f.name)
    config = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / PROM_CONFIG.name)],
                            capture_output=True, text=True, timeout=30)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout + config.stderr
    rules = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / ALERTS.name)],
                           capture_output=True, text=True, timeout=30)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in rules.stdout + rules.stderr


# --------------------------------------------------------------------------- against the live stack


@pytest.mark.parametrize("e", ALL_EXPRS, ids=[f"{e.kind}:{e.where}" for e in ALL_EXPRS])
def test_expression_returns_data(stack: Stack, e: Expr) -> None:
    problems = check_expr(e, stack.prom, stack.variables)
    assert not problems, "\n".join(map(str, problems))


@pytest.mark.parametrize("in_or", [False, True], ids=["replaced", "inside-or"])
def test_checker_flags_a_bogus_metric(stack: Stack, in_or: bool) -> None:
    bogus, where = with_bogus_metric(load_dashboard(), in_or)
    problems = check_all(dashboard_exprs(bogus), stack.prom, stack.variables)
    assert {p.where for p in problems} == {where}, "\n".join(map(str, problems))
    messages = {p.message for p in problems}
    assert "metric edgedet_frames_procesed_total has no series" in messages
    # A misspelt metric alone empties the expression; inside `or` only the metric check sees it.
    assert ("empty result" in messages) is not in_or


def test_prometheus_loaded_every_rule_and_evaluates_it_cleanly(stack: Stack) -> None:
    groups = stack.prom.get("/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == EXPECTED_ALERTS
    for name, r in rules.items():
        assert (r["health"], r.get("lastError", "")) == ("ok", ""), f"{name}: {r}"


def test_healthy_daemon_raises_no_alert(stack: Stack) -> None:
    def states() -> dict[str, str]:
        groups = stack.prom.get("/api/v1/rules")["data"]["groups"]
        return {r["name"]: r["state"] for g in groups for r in g["rules"] if r["name"] in QUIET_ALERTS}

    try:
        wait_for(lambda: set(states().values()) == {"inactive"}, 15, "quiet alerts to be inactive", 0.2)
    except TimeoutError as exc:
        pytest.fail(f"{exc}: {states()}")


def test_render_dashboard_script_draws_the_main_panels(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "dashboard.png"
    run = subprocess.run(
        [sys.executable, str(RENDER), "--prometheus", stack.prom.base, "--minutes", "1",
         "--scrape-interval", "1s", "--camera", CAMERA, "--job", JOB, "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
