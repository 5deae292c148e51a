"""``edgedet fleet`` against a real mosquitto on loopback, with one real daemon and one simulated
node (tests/fleet_sim.py), and the fleet grid in headless Chromium.

The real daemon shows the node side: its retained ``<node>/info`` (validated against the
``node_info`` schema) reaches the fleet, and a second process publishing as the same node id is
logged as a duplicate by the daemon. The browser test loads the console and waits for both node
cards, the simulated node's camera state, and its event in the history.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgedet.schemas import load_schema
from tests.brokers import down_camera, stop_cleanly, wait_log_line
from tests.daemoncfg import write_config
from tests.helpers import REPO, MosquittoBroker, free_port, run_daemon, stop_process, tail, wait_for
from tests.paths import DEMO_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@dataclass
class FleetProc:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def nodes(self) -> dict[str, dict[str, Any]]:
        try:
            return {n["node"]: n for n in get_json(f"{self.base}/api/nodes")["nodes"]}
        except OSError:
            return {}


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[FleetProc]:
    pytest.importorskip("fastapi")
    port = free_port()
    log = tmp_path / "fleet.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgedet", "fleet", "--broker", f"127.0.0.1:{mosquitto.port}",
                                 "--db", str(tmp_path / "fleet.db"), "--listen", f"127.0.0.1:{port}"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    f = FleetProc(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(f.base), 30, "the fleet console")
        assert proc.poll() is None, log.read_text()
        yield f
    finally:
        code = stop_process(proc)
        assert code == 0, tail(log.read_text())
        assert "Traceback" not in log.read_text()


def _healthy(base: str) -> bool:
    try:
        return bool(get_json(f"{base}/healthz")["broker_connected"])
    except OSError:
        return False


@pytest.fixture
def sim(mosquitto: MosquittoBroker) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(node: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, str(REPO / "tests" / "fleet_sim.py"), "--node", node, "--port",
                              str(mosquitto.port), "--cameras", "c0,c1"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "connected"
        return p

    yield start
    for p in procs:
        if p.stdin is not None:
            try:
                p.stdin.write("quit\n")
                p.stdin.close()
            except OSError:  # it quit already
                pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(p)
        if p.stdout is not None:
            p.stdout.close()


def test_a_real_daemon_announces_itself_and_detects_a_duplicate_node_id(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet: FleetProc,
        sim: Callable[[str], subprocess.Popen[str]]) -> None:
    if not DEMO_MODEL.is_file():
        pytest.skip("models/demo.torchscript is missing: run `make model`")
    cfg, _ = write_config(tmp_path, down_camera("gate"), mosquitto.port, node_id="dock")
    daemon = run_daemon(cfg)
    try:
        node = wait_for(lambda: fleet.nodes().get("dock", {}).get("info") and fleet.nodes()["dock"], 90,
                        "the daemon's info at the fleet")
        jsonschema.validate(node["info"], load_schema("node_info"))
        assert (node["info"]["model"], node["info"]["backend"], node["info"]["cameras"]) == (
            "demo", "torchscript", ["gate"])
        assert node["online"] and node["status"] == "online"
        wait_for(lambda: fleet.nodes()["dock"]["cameras"][0]["status"] == "offline", 30, "camera gate offline")
        # A second process with the same node id: the daemon logs it loudly, the fleet flags it.
        sim("dock")
        wait_log_line(daemon, lambda ln: "DUPLICATE NODE ID" in ln and "'dock'" in ln, "the duplicate warning", 30)
        wait_for(lambda: fleet.nodes()["dock"]["duplicate"], 30, "the fleet to flag node dock as duplicated")
    finally:
        stop_cleanly(daemon)
    wait_for(lambda: fleet.nodes()["dock"]["status"] in ("stopped", "online"), 10, "the daemon's stop")


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium + chromium-driver not installed (run scripts/ci-deps.sh as root)")
    pytest.importorskip("selenium")
    return browser, driver


def test_fleet_grid_in_a_browser(
    fleet: FleetProc, sim: Callable[[str], subprocess.Popen[str]], tmp_path: Path
) -> None:
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    a, b = sim("alpha"), sim("beta")
    assert a.stdin is not None
    a.stdin.write("event 1\n")
    a.stdin.flush()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(fleet.base + "/")

        def cards() -> dict[str, str]:  # read in one script: the grid is redrawn on every change
            pairs = drv.execute_script(
                "return [...document.querySelectorAll('#grid .node')].map(e => [e.dataset.node, e.dataset.state])")
            return {str(n): str(s) for n, s in pairs}

        try:
            wait_for(lambda: cards() == {"alpha": "online", "beta": "online"}, 20, "both node cards online")
        except TimeoutError as exc:
            logs = [e["message"] for e in drv.get_log("browser")] if hasattr(drv, "get_log") else []
            pytest.fail(f"{exc}: cards {cards()}, summary {drv.find_element(By.ID, 'summary').text!r}, "
                        f"console {logs}, nodes {fleet.nodes()}")
        cams = drv.execute_script(
            "return [...document.querySelectorAll('#grid .node[data-node=\"alpha\"] .cam')]"
            ".map(e => [e.dataset.camera, e.dataset.state, e.innerText])")
        assert [(c, s) for c, s, _ in cams] == [("c0", "online"), ("c1", "online")]
        assert "5 fps · 120 ms" in cams[0][2]
        wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, '#history tr[data-event="sim-1"][data-node="alpha"]'),
                 20, "alpha's event in the history table")
        # beta stops cleanly: its card turns offline without a page reload.
        assert b.stdin is not None
        b.stdin.write("quit\n")
        b.stdin.flush()
        wait_for(lambda: cards().get("beta") == "offline", 20, "beta's card offline")
        drv.save_screenshot(str(tmp_path / "fleet-console.png"))
        if os.environ.get("EDGEDET_SCREENSHOTS") == "1":  # refresh the README's picture on purpose only
            drv.save_screenshot(str(REPO / "docs" / "fleet-console.png"))
    finally:
        drv.quit()
