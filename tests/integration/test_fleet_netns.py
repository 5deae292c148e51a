"""Store-and-forward per node, for real: three nodes in network namespaces, each with its own
mosquitto bridged (``cleansession false``, QoS 1, the bridge config of scripts/install.sh
--local-broker) to a central mosquitto in a fourth namespace, where ``edgedet fleet`` runs.

Topology (made by the fixture, removed at teardown; root only)::

    ns node-i: sim (tests/fleet_sim.py) -> mosquitto 127.0.0.1:1883 --bridge--> veth 10.231.i.2
    ns centre: veth 10.231.i.1 -> mosquitto 0.0.0.0:1883 <- edgedet fleet (SQLite history)

Each node's broker listens on its own loopback only: nothing at the centre can connect to a node
(the fleet needs no inbound connection). The test cuts node 1's uplink (``ip link set ... down``)
for 30 s while it raises events, restores it, and checks from the fleet's SQLite history that
every event arrived at the centre in order per node, that the centre saw node 1 go offline and
online again (the bridge's Last Will on ``<node>/uplink``) and the others never go offline, and
that a verdict posted at the centre reaches node 1 through its bridge.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import MOSQUITTO, REPO, pwd_name, stop_process, tail, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODES = ("n1", "n2", "n3")
CUT_S = 30.0
KEEPALIVE_S = 4  # the bridge's keepalive: the centre notices a cut uplink after 1.5x this
PREFIX = "edgedet"


def bridge_lines(node: str, central: str, prefix: str = PREFIX, keepalive: int = KEEPALIVE_S) -> list[str]:
    """The bridge section scripts/install.sh --local-broker writes, without TLS (the test's centre)."""
    argv = ["bash", str(REPO / "scripts" / "install.sh"), "--print-bridge", central, "--node", node,
            "--topic-prefix", prefix, "--no-tls"]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    lines = [ln for ln in text.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    # Faster than production (60 s keepalive, 2-60 s restarts) so the test notices a cut in seconds.
    return [ln for ln in lines if not ln.startswith("restart_timeout")] + [
        f"keepalive_interval {keepalive}", "restart_timeout 1 2"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class Sim:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if line.startswith(prefix):
                self.seen.remove(line)
                return line
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            self.seen.append(line)
        raise AssertionError(f"simulator did not print {prefix!r} within {timeout} s (saw {self.seen})")


@dataclass
class Fleet:
    tag: str
    tmp: Path
    db: Path
    sims: dict[str, Sim]
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]]

    def ns(self, name: str) -> str:
        return f"{self.tag}{name}"

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
            try:
                return db.execute(sql, args).fetchall()
            except sqlite3.OperationalError:  # tables not created yet
                return []

    def availability(self, node: str) -> list[bool]:
        return [bool(r[0]) for r in self.query("SELECT online FROM availability WHERE node=? ORDER BY seq", node)]

    def event_steps(self, node: str) -> list[tuple[str, str]]:
        return [(str(i), str(t)) for i, t in self.query("SELECT id, type FROM messages WHERE node=? ORDER BY seq",
                                                        node)]

    def logs(self) -> str:
        parts = []
        for f in sorted(self.tmp.glob("*.log")):
            parts.append(f"--- {f.name}:\n{tail(f.read_text(errors='replace'))}")
        return "\n".join(parts)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    for tool in ("ip",):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (iproute2)")
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} not installed (run scripts/ci-deps.sh as root)")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")


def _mosquitto(tmp: Path, name: str, lines: list[str]) -> Path:
    conf = tmp / f"{name}.conf"
    data = tmp / f"{name}-data"
    data.mkdir(exist_ok=True)
    conf.write_text("\n".join([f"user {pwd_name()}", "persistence true", f"persistence_location {data}/",
                               "max_queued_messages 100000", f"log_dest file {tmp / (name + '.log')}",
                               "log_type all", *lines]) + "\n")
    return conf


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    _require_root()
    tag = f"ef{os.getpid() % 100000}"
    namespaces: list[str] = []
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    sims: dict[str, Sim] = {}
    threads: list[threading.Thread] = []
    db = tmp_path / "fleet.db"
    try:
        centre = f"{tag}c"
        ip("netns", "add", centre)
        namespaces.append(centre)
        ip("-n", centre, "link", "set", "lo", "up")
        for i, node in enumerate(NODES, start=1):
            ns = f"{tag}{node}"
            ip("netns", "add", ns)
            namespaces.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # The veth pair lives only inside the namespaces (created there directly).
            ip("link", "add", f"{tag}c{i}", "netns", centre, "type", "veth", "peer", "name", f"{tag}u{i}",
               "netns", ns)
            ip("-n", centre, "addr", "add", f"10.231.{i}.1/24", "dev", f"{tag}c{i}")
            ip("-n", ns, "addr", "add", f"10.231.{i}.2/24", "dev", f"{tag}u{i}")
            ip("-n", centre, "link", "set", f"{tag}c{i}", "up")
            ip("-n", ns, "link", "set", f"{tag}u{i}", "up")

        def in_ns(ns: str, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
            with open(tmp_path / f"{log_name}.log", "ab") as log:
                proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
            procs.append(proc)
            return proc

        in_ns(centre, [str(MOSQUITTO), "-c", str(_mosquitto(tmp_path, "centre", [
            "listener 1883 0.0.0.0", "allow_anonymous true"]))], "centre-stdout")
        env_py = [sys.executable, "-m", "edgedet", "fleet", "--broker", "127.0.0.1:1883", "--db", str(db),
                  "--listen", "127.0.0.1:8090"]
        for i, node in enumerate(NODES, start=1):
            lines = ["listener 1883 127.0.0.1", "allow_anonymous true", *bridge_lines(node, f"10.231.{i}.1:1883")]
            in_ns(f"{tag}{node}", [str(MOSQUITTO), "-c", str(_mosquitto(tmp_path, f"node-{node}", lines))],
                  f"node-{node}-stdout")
        in_ns(centre, env_py, "fleet")
        for node in NODES:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", f"{tag}{node}", sys.executable, str(REPO / "tests" / "fleet_sim.py"),
                 "--node", node, "--host", "127.0.0.1", "--port", "1883"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            procs.append(proc)
            sim = Sim(proc)
            sims[node] = sim

            def pump(p: subprocess.Popen[str] = proc, q: queue.Queue[str] = sim.lines) -> None:
                assert p.stdout is not None
                for line in p.stdout:
                    q.put(line.rstrip("\n"))

            t = threading.Thread(target=pump, name=f"sim-{node}", daemon=True)
            t.start()
            threads.append(t)
        yield Fleet(tag, tmp_path, db, sims, procs)
    finally:
        for sim in sims.values():
            if sim.proc.poll() is None and sim.proc.stdin is not None:
                try:
                    sim.send("quit")
                    sim.proc.stdin.close()
                except OSError:
                    pass
        for proc in reversed(procs):
            if proc.poll() is None:
                stop_process(proc, timeout=10)
        for t in threads:
            t.join(5)
        for ns in reversed(namespaces):  # deleting a namespace removes its veth ends too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_events_survive_a_cut_uplink_in_order_and_the_centre_sees_availability(fleet: Fleet) -> None:
    for sim in fleet.sims.values():
        sim.expect("connected")
    try:
        wait_for(lambda: all(fleet.availability(n)[-1:] == [True] for n in NODES), 60,
                 "the centre to see every node online")
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{fleet.logs()}")

    # Cut node 1's uplink; the centre notices from the bridge's Last Will.
    ip("-n", fleet.ns("n1"), "link", "set", f"{fleet.tag}u1", "down")
    cut_at = time.monotonic()
    sent: dict[str, list[int]] = {n: [] for n in NODES}
    for k in range(1, 4):  # events raised during the outage, on the cut node and on a healthy one
        for node in ("n1", "n2"):
            fleet.sims[node].send(f"event {k}")
            fleet.sims[node].expect(f"sent {k}")
            sent[node].append(k)
    try:
        wait_for(lambda: fleet.availability("n1")[-1:] == [False], 20, "the centre to see n1 offline")
        wait_for(lambda: len(fleet.event_steps("n2")) == 9, 20, "n2's events at the centre during n1's outage")
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{fleet.logs()}")
    for k in range(4, 6):
        fleet.sims["n1"].send(f"event {k}")
        fleet.sims["n1"].expect(f"sent {k}")
        sent["n1"].append(k)
    assert fleet.event_steps("n1") == [], "n1's events reached the centre through a cut link"
    # The outage lasts CUT_S; meanwhile n1 stays offline at the centre and its events stay queued.
    wait_for(lambda: time.monotonic() - cut_at >= CUT_S and fleet.event_steps("n1") == [], CUT_S + 5,
             "the outage to last")
    assert fleet.availability("n1")[-1:] == [False]
    ip("-n", fleet.ns("n1"), "link", "set", f"{fleet.tag}u1", "up")

    expected = {n: [(f"sim-{k}", t) for k in ks for t in ("new", "update", "end")] for n, ks in sent.items()}
    try:
        wait_for(lambda: fleet.event_steps("n1") == expected["n1"] and fleet.availability("n1")[-1:] == [True], 60,
                 "n1's queued events and its online status at the centre")
    except TimeoutError as exc:
        pytest.fail(f"{exc}: n1 steps {fleet.event_steps('n1')}, availability {fleet.availability('n1')}\n"
                    f"{fleet.logs()}")
    assert fleet.event_steps("n2") == expected["n2"]
    assert fleet.event_steps("n3") == []
    assert fleet.availability("n1") == [True, False, True]
    assert fleet.availability("n2") == [True] and fleet.availability("n3") == [True]

    # A verdict posted at the centre reaches the owning node through its bridge.
    post = subprocess.run(
        ["ip", "netns", "exec", fleet.ns("c"), sys.executable, "-c",
         "import json,sys,urllib.request as u;"
         "r=u.urlopen(u.Request('http://127.0.0.1:8090/api/events/n1/sim-2/verdict',"
         "data=b'{\"verdict\":\"false_positive\"}',headers={'Content-Type':'application/json'}),timeout=10);"
         "print(r.read().decode())"], capture_output=True, text=True, timeout=30)
    assert post.returncode == 0, post.stdout + post.stderr
    line = fleet.sims["n1"].expect("feedback ", timeout=20)
    verdict = json.loads(line.removeprefix("feedback "))
    assert (verdict["event_id"], verdict["verdict"], verdict["camera"]) == ("sim-2", "false_positive", "c0")
