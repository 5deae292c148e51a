"""Metrics at fleet scale: config/prometheus/edgedet-central.yml federating two node-side
Prometheus instances (config/prometheus/edgedet-node.yml), all real, on loopback ports.

Each node-side Prometheus scrapes a real ``edgedet.metrics`` endpoint (the daemon's own
``Metrics`` and ``serve``, without a model) every second and labels its series with
``node``. The central one federates both; the queries the fleet row of the Grafana dashboard
relies on (per-node series, the ``$node`` variable) must return both nodes there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from edgedet.metrics import Metrics, serve, stop_server
from tests.helpers import free_port, stop_process, tail, wait_for
from tests.integration.test_prometheus import (
    PROMETHEUS,
    PROMTOOL,
    Expr,
    Prom,
    check_all,
    dashboard_exprs,
    http_ok,
    load_dashboard,
    substitute,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NODE_CFG = REPO / "config" / "prometheus" / "edgedet-node.yml"
CENTRAL_CFG = REPO / "config" / "prometheus" / "edgedet-central.yml"
ALERTS = REPO / "config" / "prometheus" / "edgedet-alerts.yml"
NODES = ("n1", "n2")


def test_promtool_accepts_the_fleet_configs(tmp_path: Path) -> None:
    if not Path(PROMTOOL).is_file():
        pytest.skip(f"{PROMTOOL} is not installed")
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    for cfg in (NODE_CFG, CENTRAL_CFG):
        shutil.copy(cfg, tmp_path / cfg.name)
        out = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / cfg.name)], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr


def _start(tmp: Path, name: str, cfg: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    (tmp / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / (name + '.yml')}", f"--storage.tsdb.path={tmp / (name + '-tsdb')}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Prom]:
    if not Path(PROMETHEUS).is_file():
        pytest.skip(f"{PROMETHEUS} not installed (apt-get install prometheus)")
    servers = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        node_ports = {}
        for i, node in enumerate(NODES):
            metrics = Metrics(CollectorRegistry())
            metrics.init_camera("gate")
            metrics.camera_up.labels(camera="gate").set(1)
            metrics.frames_processed.labels(camera="gate").inc(10 * (i + 1))
            metrics.events_active.labels(camera="gate", label="smoke").set(i)
            metrics.set_build(version="test", model="m", torch="-", device="cpu")
            server = serve(metrics.registry, "127.0.0.1", 0, lambda: (True, {}))
            servers.append(server)
            cfg: dict[str, Any] = yaml.safe_load(NODE_CFG.read_text())
            cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", external_labels={"node": node})
            cfg["rule_files"] = [str(ALERTS)]
            (job,) = cfg["scrape_configs"]
            job.update(scrape_interval="1s", scrape_timeout="1s")
            target = f"127.0.0.1:{server[0].server_address[1]}"
            job["static_configs"] = [{"targets": [target], "labels": {"node": node}}]
            node_ports[node] = free_port()
            procs.append(_start(tmp_path, f"node-{node}", cfg, node_ports[node]))
        cfg = yaml.safe_load(CENTRAL_CFG.read_text())
        cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        cfg["rule_files"] = [str(ALERTS)]
        (job,) = cfg["scrape_configs"]
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in node_ports.values()]}]
        port = free_port()
        procs.append(_start(tmp_path, "central", cfg, port))
        prom = Prom(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            if any(p.poll() is not None for p in procs):
                return True
            return http_ok(f"{prom.base}/-/ready") and len(prom.result('edgedet_camera_up{job="edgedet"}')) == 2

        try:
            wait_for(ready, 60, "the central Prometheus to hold both nodes' series", interval=0.2)
        except TimeoutError as exc:
            logs = "\n".join(f"--- {f.name}\n{tail(f.read_text())}" for f in tmp_path.glob("*.log"))
            pytest.fail(f"{exc}\n{logs}")
        assert all(p.poll() is None for p in procs), "a Prometheus exited early"
        yield prom
    finally:
        for p in procs:
            stop_process(p)
        for s in servers:
            stop_server(*s)


def test_central_prometheus_federates_every_node(central: Prom) -> None:
    up = central.result('edgedet_camera_up{job="edgedet"}')
    assert sorted(s["metric"]["node"] for s in up) == list(NODES)
    assert all(s["metric"]["camera"] == "gate" and s["value"][1] == "1" for s in up)
    frames = {s["metric"]["node"]: float(s["value"][1])
              for s in central.result('sum by (node) (edgedet_frames_processed_total{job="edgedet"})')}
    assert frames == {"n1": 10.0, "n2": 20.0}
    # The dashboard's $node variable and its fleet row, at the centre.
    nodes = central.get("/api/v1/label/node/values", **{"match[]": 'edgedet_build_info{job="edgedet"}'})
    assert sorted(nodes["data"]) == list(NODES)
    per_node = central.result('count by (node) (edgedet_camera_up{job="edgedet", node=~"n1|n2"} == 1)')
    assert {s["metric"]["node"]: s["value"][1] for s in per_node} == {"n1": "1", "n2": "1"}


def test_the_dashboard_fleet_row_and_node_variable_work_at_the_centre(central: Prom) -> None:
    """Every target of the dashboard's "Fleet overview" row, and the $node variable, return data for
    both nodes from the central Prometheus (the same checks as tests/integration/test_prometheus.py)."""
    dashboard = load_dashboard()
    (row,) = [p for p in dashboard["panels"] if p.get("type") == "row" and p.get("title") == "Fleet overview"]
    start = dashboard["panels"].index(row) + 1
    end = next((i for i, p in enumerate(dashboard["panels"][start:], start) if p.get("type") == "row"), None)
    fleet = [Expr(f"panel {p['title']!r}", t["expr"], "target")
             for p in dashboard["panels"][start:end] for t in p.get("targets", [])]
    assert len(fleet) >= 4
    node_var = [e for e in dashboard_exprs(dashboard) if e.where == "variable $node"]
    variables = {"job": "edgedet", "node": "n1|n2", "instance": ".*", "camera": ".*", "__rate_interval": "15s",
                 "__interval": "15s", "__range": "1m"}
    problems: list[object] = []

    def clean() -> bool:  # rate() needs two federated samples: wait for them with a deadline
        problems[:] = check_all(fleet + node_var, central, variables)
        return not problems

    try:
        wait_for(clean, 30, "every fleet-row query to return data at the centre", interval=0.5)
    except TimeoutError:
        pytest.fail(f"fleet row queries without data: {problems}")
    per_node = {s["metric"].get("node") for s in central.result(substitute(fleet[1].expr, variables))}
    assert per_node == set(NODES), per_node
