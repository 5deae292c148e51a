"""Locked-down mosquitto brokers for integration tests: a throwaway PKI made with ``openssl``,
password files made with ``mosquitto_passwd``, the mosquitto config lines that switch a listener
to TLS and/or passwords, and daemon-side checks (log lines, /healthz, a clean stop). The MQTT
subscriber (``tests.helpers.MqttSubscriber``, fixture ``mqtt_sub``) speaks TLS and logs in.

Use with the ``mosquitto_factory`` fixture (its listener line comes first, so the TLS lines below
apply to that listener, and a later ``allow_anonymous false`` overrides its default)::

    pki = make_pki(tmp_path / "pki")
    pw = password_file(tmp_path, {"edge": "right-Pa55"})
    broker = mosquitto_factory(extra_lines=[*tls_lines(pki), *auth_lines(pw)])
    sub = mqtt_sub(broker, "#", username="edge", password="right-Pa55", ca=pki.ca)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MOSQUITTO, DaemonProcess, free_port, is_ci, stop_daemon, wait_for

TEST_HOST_SAN = "IP:127.0.0.1"
_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def require_tools(*names: str) -> None:
    """Skip (fail on CI, where every system dependency must be present) when a tool is missing."""
    absent = [name for name in names if shutil.which(name) is None]
    if absent:
        reason = f"{', '.join(absent)} not installed (run scripts/ci-deps.sh as root)"
        if is_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def require_mosquitto() -> None:
    """Skip (fail on CI) without mosquitto, for fixtures that cannot use ``mosquitto_factory``."""
    if not MOSQUITTO.exists():
        reason = f"{MOSQUITTO} not installed (run scripts/ci-deps.sh as root)"
        if is_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True, slots=True)
class Pki:
    """Certificates and keys (PEM) for one test run."""

    dir: Path
    ca: Path  # the CA that signed server and client
    server_cert: Path  # CN=127.0.0.1, SAN IP:127.0.0.1, serverAuth
    server_key: Path
    client_cert: Path  # CN=edgedet-client, clientAuth
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: "untrusted" for the broker's certificate


def _openssl(*args: str | Path) -> None:
    cmd = ["openssl", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")


def _ca(folder: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\n[dn]\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    _openssl("req", "-x509", *_EC, "-config", ext, "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={cn}")
    return cert, key


def _leaf(folder: Path, name: str, cn: str, ca: tuple[Path, Path], extensions: Iterable[str]) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.{suffix}" for suffix in ("crt", "key", "csr", "ext"))
    ext.write_text(
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n" + "".join(f"{e}\n" for e in extensions)
    )
    req = folder / "req.cnf"
    req.write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    _openssl("req", "-new", *_EC, "-config", req, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", f"0x{uuid.uuid4().hex}",
             "-days", "2", "-extfile", ext, "-out", cert)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and an
    unrelated second CA. EC P-256 keys, valid for two days."""
    require_tools("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca", "edgedet test CA")
    other_ca, _ = _ca(folder, "other-ca", "edgedet untrusted test CA")
    server = _leaf(folder, "server", "127.0.0.1", ca,
                   [f"subjectAltName = {TEST_HOST_SAN}", "extendedKeyUsage = serverAuth"])
    client = _leaf(folder, "client", "edgedet-client", ca, ["extendedKeyUsage = clientAuth"])
    return Pki(folder, ca[0], server[0], server[1], client[0], client[1], other_ca)


# --------------------------------------------------------------------------- mosquitto config


def password_file(folder: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file (hashed by ``mosquitto_passwd``) for ``users`` (name -> password)."""
    require_tools("mosquitto_passwd")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mosquitto.passwd"
    path.unlink(missing_ok=True)
    for name, password in users.items():
        create = [] if path.exists() else ["-c"]
        subprocess.run(["mosquitto_passwd", "-b", *create, str(path), name, password], check=True,
                       capture_output=True, timeout=30)
    return path


def auth_lines(passwords: Path) -> list[str]:
    """Only users in ``passwords`` may connect."""
    return ["allow_anonymous false", f"password_file {passwords}"]


def tls_lines(pki: Pki, *, require_certificate: bool = False) -> list[str]:
    """TLS on the broker's listener with ``pki``'s server certificate; optionally clients must
    present a certificate signed by ``pki.ca``."""
    lines = [f"cafile {pki.ca}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}"]
    if require_certificate:
        lines.append("require_certificate true")
    return lines


# --------------------------------------------------------------------------- daemon-side checks


def down_camera(name: str = "gate") -> dict[str, dict[str, Any]]:
    """A camera whose RTSP server is not running: the daemon keeps retrying it and uses no CPU on
    inference (for tests that only watch the MQTT side)."""
    return {name: {"url": f"rtsp://127.0.0.1:{free_port()}/cam"}}


def wait_log_line(proc: DaemonProcess, match: Callable[[str], bool], what: str, timeout: float = 90.0) -> str:
    """The first stderr line of the daemon for which ``match`` holds; fails at once if it exits."""

    def found() -> str | None:
        line = next((ln for ln in proc.stderr_text().splitlines() if match(ln)), None)
        if line is None and proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode} before {what}:\n{proc.output()}")
        return line

    try:
        line = wait_for(found, timeout, what, interval=0.1)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{proc.output()}")
    assert line is not None
    return line


def stop_cleanly(proc: DaemonProcess) -> None:
    """SIGTERM: the daemon exits 0 and printed no traceback."""
    code = stop_daemon(proc, timeout=10)
    assert code == 0, proc.output()
    assert "Traceback" not in proc.output()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of the daemon's /healthz on 127.0.0.1."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
