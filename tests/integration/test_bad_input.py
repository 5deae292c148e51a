"""Bad input gets a clear answer: the real CLI (``python -m edgedet run -c`` / ``check-config``) as a
subprocess, asserting the exact ``error:`` line, exit code 2 and that no output holds a traceback.

Runtime trouble (broker unreachable, wrong credentials) is not bad input: the daemon logs one clear
line, keeps running and retrying, and a SIGTERM still ends it with exit code 0.

The README table "What edgedet says about bad input" mirrors these cases.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import pytest

from edgedet.model.torchscript import read_metadata
from tests.brokers import auth_lines, down_camera, healthz, password_file, stop_cleanly, wait_log_line
from tests.daemoncfg import write_config
from tests.helpers import (
    REPO,
    MosquittoBroker,
    free_port,
    metrics_text,
    parse_metric,
    run_daemon,
    wait_for,
)
from tests.paths import DEMO_MODEL

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120
RETRY_LINE = "retrying in the background every 1-30 s"
# Cases that run several daemons at once, or only wait for a log line, need no inference speed.
ONE_THREAD = {"count": 1, "threads_per_worker": 1}


def edgedet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m edgedet ARGS`` as a user runs it; output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edgedet", *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env,
        stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_rejected(result: subprocess.CompletedProcess[str], expected: str, *, first_line: bool = True,
                    code: int = 2) -> None:
    """Exit ``code`` (2: a wrong config or input file), exactly one ``error:`` line equal to ``expected``
    (and the first stderr line when ``first_line``), nothing on stdout, no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    assert error_lines(result.stderr) == [expected], output
    if first_line:
        assert result.stderr.splitlines()[0] == expected, output
    assert result.stdout == ""


# --------------------------------------------------------------------------- config errors

GOOD = """\
node_id: testnode
state_dir: $dir/state
cameras:
  gate:
    url: $clip
model:
  path: $model
metrics:
  port: $metrics_port
mqtt:
  host: 127.0.0.1
  port: $mqtt_port
"""

# (id, config text, expected first stderr line); $cfg is the config file, $dir its folder.
CONFIG_CASES = [
    (
        "malformed-yaml",
        GOOD.replace("    url: $clip", "    url: [$clip"),
        "error: $cfg:6:6: malformed YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 5, column 10)",
    ),
    (
        "unknown-key",
        GOOD.replace("  host: 127.0.0.1", "  hots: 127.0.0.1"),
        "error: $cfg:11: mqtt.hots: unknown key 'hots' (did you mean 'host'?)",
    ),
    (
        "wrong-type",
        GOOD.replace("  port: $mqtt_port", "  port: one-eight-eight-three"),
        "error: $cfg:12: mqtt.port: expected an integer (got 'one-eight-eight-three')",
    ),
    (
        "missing-model-file",
        GOOD.replace("  path: $model", "  path: $dir/missing.torchscript"),
        "error: $cfg:7: model.path: file not found: $dir/missing.torchscript",
    ),
    (
        "unsupported-camera-url",
        GOOD.replace("    url: $clip", "    url: rstp://admin:Url-Pw-77@cam.local/1"),
        "error: $cfg:5: cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device "
        "index (got 'rstp://admin:***@cam.local/1')",
    ),
    (
        "missing-camera-file",
        GOOD.replace("    url: $clip", "    url: $dir/missing.mp4"),
        "error: $cfg:5: cameras.gate.url: file not found: $dir/missing.mp4",
    ),
    (
        "missing-tls-ca",
        GOOD + "  tls:\n    ca: $dir/missing-ca.pem\n",
        "error: $cfg:14: mqtt.tls.ca: file not found: $dir/missing-ca.pem",
    ),
    (  # issue 10 item 13: ~300 bytes that aliases expand to 4.8 million values ("billion laughs")
        "yaml-alias-bomb",
        GOOD + "a: &a [x, x, x, x, x, x, x, x, x]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
        "error: $cfg:18: YAML aliases expand this value to more than 100000 values (an alias bomb?); "
        "write the values out or use fewer aliases",
    ),
    (
        "unreadable-tls-ca",
        GOOD + "  tls:\n    ca: $dir/locked-ca.pem\n",
        "error: $cfg:14: mqtt.tls.ca: cannot read $dir/locked-ca.pem: permission denied",
    ),
]


@pytest.mark.parametrize("command", ["run", "check-config"])
@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_error_is_one_line_and_exit_2(tmp_path: Path, assets: Any, command: str, text: str,
                                             expected: str) -> None:
    if "locked-ca" in text:
        if os.geteuid() == 0:
            pytest.skip("root reads any file: an unreadable file cannot be made")
        locked = tmp_path / "locked-ca.pem"
        locked.write_text("-----BEGIN CERTIFICATE-----\n")
        locked.chmod(0)
    cfg = tmp_path / "edgedet.yaml"
    values = {"dir": tmp_path, "clip": assets.clip, "model": DEMO_MODEL, "mqtt_port": free_port(),
              "metrics_port": free_port(), "cfg": cfg}
    cfg.write_text(Template(text).substitute(values))
    args: list[str | Path] = ["run", "-c", cfg] if command == "run" else ["check-config", cfg]
    result = edgedet(*args)
    assert_rejected(result, Template(expected).substitute(values))
    assert "Url-Pw-77" not in result.stderr


# --------------------------------------------------------------------------- errors found at start-up
#
# Model files are checked when the model loads; the metrics port, TLS files and model.classes
# after that. Each case needs a model load (seconds on a small machine), so every case runs at
# once in one module fixture and each test checks its own result.


def _text_file(path: Path) -> None:
    path.write_text("this is not a model\n")


def _torch_save_checkpoint(path: Path) -> None:
    """The layout torch.save writes: a zip with data.pkl and no TorchScript code/."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", pickle.dumps({"model": {"weight": [0.1, 0.2]}}))
        zf.writestr("ckpt/version", "3\n")


def _torchscript_without_metadata(path: Path) -> None:
    """A TorchScript archive layout (code/ + data.pkl) without extra/config.txt."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps({}))
        zf.writestr("m/code/__torch__.py", "")
        zf.writestr("m/version", "3\n")


def _torchscript_with_text_stride(path: Path) -> None:
    """A TorchScript archive layout whose metadata has ``stride: "thirty-two"`` (issue 10 item 13)."""
    meta = {"names": {"0": "person"}, "imgsz": [64, 64], "stride": "thirty-two", "task": "detect", "batch": 1}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps({}))
        zf.writestr("m/code/__torch__.py", "")
        zf.writestr("m/extra/config.txt", json.dumps(meta))


@dataclass(frozen=True, slots=True)
class Rejection:
    result: subprocess.CompletedProcess[str]
    expected: str
    # True: checked before the model loads (TLS files, metrics port), so the error is the first line.
    # False: model problems come after the "metrics on ..." INFO line; the error is the last line.
    first_line: bool


STARTUP_CASES = [
    "not-torchscript", "torch-save-checkpoint", "metadata-missing", "metadata-text-stride", "unknown-classes-label",
    "metrics-port-in-use", "tls-ca-not-pem", "tls-client-cert-not-pem",
]
# Not a wrong config but a machine not ready (the port still held by another process): exit 75, which
# systemd restarts (issue 10: only a wrong config or input file exits 2).
STARTUP_EXIT_CODES = {"metrics-port-in-use": 75}


@pytest.fixture(scope="module")
def startup_rejections(tmp_path_factory: pytest.TempPathFactory, assets: Any) -> dict[str, Rejection]:
    """``edgedet run -c`` for every STARTUP_CASES config, all at once."""
    folder = tmp_path_factory.mktemp("startup")
    not_pem = folder / "not-a-cert.pem"
    not_pem.write_text("this is not PEM\n")
    names = read_metadata(DEMO_MODEL).names
    cases: dict[str, tuple[dict[str, Any], str, bool]] = {}  # name -> (config sections, expected, first line)
    for name, make, message in [
        ("not-torchscript", _text_file, "not a TorchScript file (not a zip archive)"),
        ("torch-save-checkpoint", _torch_save_checkpoint,
         "this is a PyTorch checkpoint/state_dict (torch.save), not a TorchScript model: "
         "export it first with `edgedet export`"),
        ("metadata-missing", _torchscript_without_metadata,
         "no model metadata (extra file config.txt); re-export it with `edgedet export`"),
        ("metadata-text-stride", _torchscript_with_text_stride,
         "metadata 'stride' must be a positive integer (got 'thirty-two'); re-export the model"),
    ]:
        model = folder / f"{name}.torchscript"
        make(model)
        cases[name] = ({"model": {"path": str(model)}}, f"error: {model}: {message}", False)
    cases["unknown-classes-label"] = (
        {"model": {"path": str(DEMO_MODEL), "classes": [names[0], "Nonsense"]}},
        f"error: model.classes: unknown label 'Nonsense' (model labels: {', '.join(names)})", False,
    )
    cases["tls-ca-not-pem"] = (
        {"mqtt": {"tls": {"ca": str(not_pem)}}},
        f"error: mqtt.tls.ca: {not_pem} is not a usable PEM CA bundle (NO_CERTIFICATE_OR_CRL_FOUND)", True,
    )
    cases["tls-client-cert-not-pem"] = (
        {"mqtt": {"tls": {"cert": str(not_pem), "key": str(not_pem)}}},
        f"error: mqtt.tls.cert/key: cannot load client certificate {not_pem} with key {not_pem} "
        "(not a PEM certificate and private key)", True,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases["metrics-port-in-use"] = (
            {"metrics_port": port}, f"error: metrics.port: 127.0.0.1:{port} is already in use", True,
        )
        assert sorted(cases) == sorted(STARTUP_CASES)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        procs = {}
        for name, (sections, _, _) in cases.items():
            (folder / name).mkdir()
            sections.setdefault("workers", ONE_THREAD)
            cfg, _ = write_config(folder / name, {"gate": {"url": str(assets.clip)}}, free_port(), **sections)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "edgedet", "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO, env=env,
            )
        out = {}
        try:
            for name, proc in procs.items():
                stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
                result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
                out[name] = Rejection(result, cases[name][1], cases[name][2])
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    return out


@pytest.mark.parametrize("case", STARTUP_CASES)
def test_startup_error_is_one_line_and_exit_2(startup_rejections: dict[str, Rejection], case: str) -> None:
    rejection = startup_rejections[case]
    assert_rejected(rejection.result, rejection.expected, first_line=rejection.first_line,
                    code=STARTUP_EXIT_CODES.get(case, 2))
    if not rejection.first_line:  # only INFO lines before it, and the error is the last line
        assert rejection.result.stderr.splitlines()[-1] == rejection.expected


# --------------------------------------------------------------------------- runtime: keeps running


def test_unreachable_broker_keeps_running_and_healthz_503(tmp_path: Path) -> None:
    host, port = "127.0.0.1", free_port()  # nothing listens there: refused at once, as for a host that is down
    cfg, mport = write_config(tmp_path, down_camera(), port, mqtt={"host": host}, workers=ONE_THREAD)
    proc = run_daemon(cfg)
    try:
        prefix = f"WARNING edgedet.publish: cannot reach MQTT broker {host}:{port} ("
        line = wait_log_line(proc, lambda ln: ln.startswith(prefix), "the 'cannot reach MQTT broker' line")
        assert line == f"{prefix}[Errno 111] Connection refused); {RETRY_LINE}"
        status, body = healthz(mport)
        assert status == 503 and f"MQTT broker {host}:{port} not connected" in body["reason"], body
        assert parse_metric(metrics_text(mport), "edgedet_mqtt_connected") == 0
        assert proc.poll() is None, proc.output()
    finally:
        stop_cleanly(proc)


def test_wrong_broker_credentials_logged_once_retried_and_not_fatal(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = mosquitto_factory(extra_lines=auth_lines(password_file(tmp_path, {"edge": "right-Pa55"})))
    cfg, mport = write_config(tmp_path, down_camera(), broker.port, workers=ONE_THREAD,
                              mqtt={"username": "edge", "password": "wr0ng-Pa55"})
    proc = run_daemon(cfg)
    try:
        expected = (f"ERROR edgedet.publish: MQTT broker 127.0.0.1:{broker.port} refused connection: "
                    "Not authorized (check mqtt.username/password)")
        wait_log_line(proc, lambda ln: ln == expected, "the auth error line")
        # paho retries with backoff (1 s, 2 s, ...): the broker sees a second attempt
        wait_for(lambda: broker.log_text().count("not authorised") >= 2, 30, "a second login attempt")
        assert proc.poll() is None, proc.output()
        status, body = healthz(mport)
        assert status == 503 and "not connected" in body["reason"], body
    finally:
        stop_cleanly(proc)
    assert proc.stderr_text().count(expected) == 1, "logged once per state change, not per retry"
    assert "wr0ng-Pa55" not in proc.output()
