"""systemd integration: the unit file (systemd-analyze), scripts/install.sh into a throwaway root,
and sd_notify from a child process the way systemd sees it (credentials included)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgedet.config import parse_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edgedet.service"
INSTALL = REPO / "scripts" / "install.sh"
EXAMPLE_CONFIG = REPO / "config" / "edgedet.example.yaml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
DEADLINE_S = 15.0
MAX_EXPOSURE = 2.5  # `systemd-analyze security` score: 1.7 when written (0 = locked down, 10 = none)

needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=DEADLINE_S, check=False
    )


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``; comments and blank lines dropped."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {raw!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit whose ExecStart binary exists here (verify insists on it)."""
    exe = Path(sys.executable).parent / "edgedet"
    binary = str(exe) if os.access(exe, os.X_OK) else "/bin/true"
    text = UNIT.read_text() if text is None else text
    patched, n = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={binary}", text)
    assert n == 1
    path = tmp_path / "edgedet.service"
    path.write_text(patched)
    return path


# --------------------------------------------------------------------------- the unit file


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = analyze("verify", str(runnable_unit(tmp_path)))
    # verify exits 0 even for unknown keys and unparsable values: any output is a finding.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    unit = runnable_unit(tmp_path, UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    proc = analyze("verify", str(unit))
    assert "Unknown key 'ProtectClok'" in proc.stderr


@needs_analyze
def test_security_exposure(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    if "--offline" not in analyze("security", "--help").stdout:
        pytest.skip("this systemd-analyze has no `security --offline` (needs systemd >= 250)")
    proc = analyze("security", "--no-pager", "--offline=yes", str(runnable_unit(tmp_path)))
    m = re.search(r"Overall exposure level for edgedet\.service: ([0-9.]+)", proc.stdout)
    assert m is not None, proc.stdout + proc.stderr
    exposure = float(m.group(1))
    record_property("systemd_exposure", exposure)
    assert exposure <= MAX_EXPOSURE, proc.stdout


EXPECTED_SETTINGS = {
    ("Unit", "Wants"): ["network-online.target"],
    ("Unit", "After"): ["network-online.target"],
    ("Service", "Type"): ["notify"],
    ("Service", "NotifyAccess"): ["main"],
    ("Service", "ExecStart"): ["/opt/edgedet/venv/bin/edgedet run --config /etc/edgedet/edgedet.yaml"],
    ("Service", "ExecReload"): ["/bin/kill -HUP $MAINPID"],
    ("Service", "WatchdogSec"): ["30"],
    ("Service", "Restart"): ["on-failure"],
    ("Service", "RestartSec"): ["5"],
    ("Service", "RestartPreventExitStatus"): ["2"],
    ("Service", "RestartForceExitStatus"): ["SIGHUP"],
    ("Service", "TimeoutStartSec"): ["120"],
    ("Service", "TimeoutStopSec"): ["20"],
    ("Service", "User"): ["edgedet"],
    ("Service", "Group"): ["edgedet"],
    ("Service", "SupplementaryGroups"): ["video"],
    ("Service", "StateDirectory"): ["edgedet"],
    ("Service", "ConfigurationDirectory"): ["edgedet"],
    ("Service", "EnvironmentFile"): ["-/etc/edgedet/edgedet.env"],
    ("Service", "Environment"): ["PYTHONUNBUFFERED=1"],
    ("Service", "ProtectSystem"): ["strict"],
    ("Service", "ProtectHome"): ["yes"],
    ("Service", "PrivateTmp"): ["yes"],
    ("Service", "NoNewPrivileges"): ["yes"],
    ("Service", "CapabilityBoundingSet"): [""],
    ("Service", "AmbientCapabilities"): [""],
    ("Service", "RestrictAddressFamilies"): ["AF_INET AF_INET6 AF_UNIX"],
    ("Service", "DevicePolicy"): ["closed"],
    ("Service", "DeviceAllow"): ["char-video4linux rw"],
    ("Service", "SystemCallFilter"): ["@system-service"],
    ("Service", "SystemCallArchitectures"): ["native"],
    ("Service", "MemoryDenyWriteExecute"): ["no"],
    ("Service", "UMask"): ["0027"],
    ("Service", "LimitNOFILE"): ["4096"],
    ("Install", "WantedBy"): ["multi-user.target"],
}
YES_SETTINGS = [
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
    "ProtectHostname", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
]


def test_unit_settings() -> None:
    settings = unit_settings(UNIT.read_text())
    for (section, key), values in EXPECTED_SETTINGS.items():
        assert settings[section].get(key) == values, f"[{section}] {key}"
    for key in YES_SETTINGS:
        assert settings["Service"].get(key) == ["yes"], key
    env = " ".join(settings["Service"]["Environment"])
    assert "OMP_NUM_THREADS" not in env  # edgedet sizes torch's thread pools itself


# --------------------------------------------------------------------------- install.sh


def install(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def actions(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def skipped(stdout: str) -> list[list[str]]:
    out = []
    for line in stdout.splitlines():
        m = re.fullmatch(r"- skipped \([^)]*\): (.*)", line)
        if m:
            out.append(shlex.split(m.group(1)))
    return out


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "yolo-dock.torchscript"
    path.write_bytes(b"not really a model")
    return path


@pytest.mark.parametrize("script", [INSTALL, REPO / "scripts" / "arm64_check.sh"], ids=lambda p: p.name)
def test_install_script_is_clean_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=DEADLINE_S)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path, model: Path) -> None:
    root = tmp_path / "root"
    proc = install("--dry-run", "--skip-venv", "--root", str(root), "--model", str(model))
    assert not root.exists()
    assert actions(proc.stdout) == [
        ["install", "-d", "-m", "0755", f"{root}/opt/edgedet"],
        ["install", "-d", "-m", "0750", f"{root}/etc/edgedet"],
        ["install", "-d", "-m", "0750", f"{root}/var/lib/edgedet"],
        ["install", "-d", "-m", "0750", f"{root}/var/lib/edgedet/models"],
        ["install", "-m", "0640", str(model), f"{root}/var/lib/edgedet/models/yolo-dock.torchscript"],
        ["write_config", f"{root}/etc/edgedet/edgedet.yaml", "/var/lib/edgedet/models/yolo-dock.torchscript"],
        ["write_env_template", f"{root}/etc/edgedet/edgedet.env"],
        ["write_unit", f"{root}/etc/systemd/system/edgedet.service"],
    ]
    assert skipped(proc.stdout) == [
        ["useradd", "--system", "--user-group", "--groups", "video", "--home-dir", "/var/lib/edgedet",
         "--no-create-home", "--shell", "/usr/sbin/nologin", "edgedet"],
        [sys.executable, "-m", "venv", f"{root}/opt/edgedet/venv"],
        [f"{root}/opt/edgedet/venv/bin/pip", "install", "--upgrade", f"{REPO}[profiles]"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "edgedet.service"],  # fresh config: enable, start after editing it
    ]
    for line in proc.stdout.splitlines():
        assert line.startswith(("+ ", "- skipped (", "# ")), line


def test_dry_run_plans_the_venv(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = install("--dry-run", "--root", str(root), "--no-enable", "--prefix", "/srv/edgedet")
    assert not root.exists()
    planned = actions(proc.stdout)
    venv = f"{root}/srv/edgedet/venv"
    assert [sys.executable, "-m", "venv", venv] in planned or [
        sys.executable, "-m", "venv", "--system-site-packages", venv  # Jetson
    ] in planned
    assert planned[-4] == [f"{venv}/bin/pip", "install", "--upgrade", f"{REPO}[profiles]"]
    assert skipped(proc.stdout) == [
        ["useradd", "--system", "--user-group", "--groups", "video", "--home-dir", "/var/lib/edgedet",
         "--no-create-home", "--shell", "/usr/sbin/nologin", "edgedet"],
        ["systemctl", "daemon-reload"],
    ]


@pytest.mark.parametrize("backend", ["onnxruntime", "ncnn"])
def test_dry_run_without_torch_for_onnxruntime_and_ncnn(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "root"
    proc = install("--dry-run", "--root", str(root), "--no-enable", "--backend", backend)
    planned = actions(proc.stdout)
    pip = f"{root}/opt/edgedet/venv/bin/pip"
    pips = [a for a in planned if a[0] == pip]
    assert pips[0] == [pip, "install", "--upgrade", "--no-deps", str(REPO)]
    reqs = pips[1][3:]
    assert pips[1][:3] == [pip, "install", "--upgrade"]
    assert not any(r.startswith("torch") for r in reqs), reqs
    assert {"numpy>=1.24", "paho-mqtt>=2.0", "opencv-python-headless>=4.8"} <= set(reqs)
    runtime = "onnxruntime" if backend == "onnxruntime" else "ncnn"
    assert any(r.startswith(runtime) for r in reqs), reqs
    assert any(r.startswith("astral") for r in reqs), reqs  # the example config's sun rules
    assert f"# backend {backend}: no torch (the daemon never imports it for this backend)" in proc.stdout


def test_model_directory_is_copied_and_picks_the_backend(tmp_path: Path) -> None:
    model_dir = tmp_path / "yolo-dock_ncnn_model"
    model_dir.mkdir()
    (model_dir / "model.ncnn.param").write_text("7767517\n")
    (model_dir / "model.ncnn.bin").write_bytes(b"\0" * 16)
    root = tmp_path / "root"
    proc = install("--root", str(root), "--no-enable", "--model", str(model_dir) + "/", "--dry-run")
    assert [f"{root}/opt/edgedet/venv/bin/pip", "install", "--upgrade", "--no-deps", str(REPO)] in actions(proc.stdout)
    install("--skip-venv", "--root", str(root), "--no-enable", "--model", str(model_dir))
    dst = root / "var" / "lib" / "edgedet" / "models" / model_dir.name
    assert sorted(p.name for p in dst.iterdir()) == ["model.ncnn.bin", "model.ncnn.param"]
    assert mode(dst / "model.ncnn.param") == 0o640
    config = (root / "etc" / "edgedet" / "edgedet.yaml").read_text()
    assert f"  path: /var/lib/edgedet/models/{model_dir.name}\n" in config
    again = install("--skip-venv", "--root", str(root), "--no-enable", "--model", str(model_dir))
    assert actions(again.stdout) == []


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_root_install_then_upgrade_keeps_config(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    install("--skip-venv", "--root", str(root), "--model", str(model))
    etc = root / "etc" / "edgedet"
    config, env_file = etc / "edgedet.yaml", etc / "edgedet.env"
    unit = root / "etc" / "systemd" / "system" / "edgedet.service"
    installed_model = root / "var" / "lib" / "edgedet" / "models" / model.name
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "etc/edgedet/edgedet.env",
        "etc/edgedet/edgedet.yaml",
        "etc/systemd/system/edgedet.service",
        f"var/lib/edgedet/models/{model.name}",
    ]
    assert (root / "opt" / "edgedet").is_dir()
    assert (mode(etc), mode(config), mode(env_file), mode(unit)) == (0o750, 0o640, 0o640, 0o644)
    assert (mode(root / "var" / "lib" / "edgedet"), mode(installed_model)) == (0o750, 0o640)
    assert unit.read_text() == UNIT.read_text()
    assert installed_model.read_bytes() == model.read_bytes()
    assert "MQTT_PASSWORD" in env_file.read_text()

    # The written config is the example with model.path pointing at the installed model.
    expected = EXAMPLE_CONFIG.read_text().replace(
        "  path: /var/lib/edgedet/models/yolov8n.torchscript\n", f"  path: /var/lib/edgedet/models/{model.name}\n"
    )
    assert expected != EXAMPLE_CONFIG.read_text()
    assert config.read_text() == expected
    monkeypatch.setenv("CAM_PASS", "secret")
    monkeypatch.setenv("MQTT_PASSWORD", "secret")
    cfg = parse_config(config.read_text(), str(config), check_files=False)
    assert cfg.model.path == f"/var/lib/edgedet/models/{model.name}"

    # Upgrade: the admin edited config and env; the old unit differs from the new one.
    config.write_text(config.read_text() + "# edited by the admin\n")
    env_file.write_text("MQTT_PASSWORD=hunter2\n")
    config_before, env_before = config.read_bytes(), env_file.read_bytes()
    unit.write_text("[Service]\nExecStart=/old\n")
    proc = install("--skip-venv", "--root", str(root))
    assert actions(proc.stdout) == [["write_unit", str(unit)]]
    assert (config.read_bytes(), env_file.read_bytes()) == (config_before, env_before)
    assert unit.read_text() == UNIT.read_text()
    assert f"# {config} exists: kept as it is" in proc.stdout.splitlines()
    assert ["systemctl", "enable", "--now", "edgedet.service"] in skipped(proc.stdout)

    # Nothing left to do: a third run changes nothing.
    again = install("--skip-venv", "--root", str(root), "--model", str(model))
    assert actions(again.stdout) == []
    assert config.read_bytes() == config_before


def test_prefix_rewrites_exec_start(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install("--skip-venv", "--no-enable", "--root", str(root), "--prefix", "/srv/edgedet/")
    settings = unit_settings((root / "etc" / "systemd" / "system" / "edgedet.service").read_text())
    assert settings["Service"]["ExecStart"] == ["/srv/edgedet/venv/bin/edgedet run --config /etc/edgedet/edgedet.yaml"]
    assert (root / "srv" / "edgedet").is_dir()
    assert not (root / "opt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument: --bogus"),
        (["--prefix"], "--prefix needs a value"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
        (["--model", "/nonexistent/model.torchscript"], "--model: no readable file"),
        (["--backend", "tensorrt"], "--backend: expected torchscript, onnxruntime, openvino or ncnn (got tensorrt)"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = install("--dry-run", "--root", str(tmp_path / "r"), *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "usage: scripts/install.sh" in proc.stderr
    assert proc.stdout == ""


def test_help() -> None:
    proc = install("--help")
    assert proc.stdout.startswith("usage: scripts/install.sh [--prefix DIR]")
    assert "--skip-venv" in proc.stdout


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() == 0 and SETPRIV is None, reason="root without setpriv to drop privileges")
def test_real_install_needs_root() -> None:
    cmd = ["bash", str(INSTALL), "--skip-venv"]
    if os.geteuid() == 0:
        assert SETPRIV is not None
        cmd = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    assert "run as root" in proc.stderr


# --------------------------------------------------------------------------- sd_notify end to end

DAEMON = textwrap.dedent(
    """
    import signal, threading
    from edgedet.sdnotify import Notifier, WatchdogThread, watchdog_interval

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    notifier = Notifier()
    interval = watchdog_interval()
    assert interval is not None
    dog = WatchdogThread(notifier, stop, lambda: (True, "1 camera ok"), interval)
    notifier.ready("started")
    dog.start()
    stop.wait()
    notifier.stopping()
    dog.join(5)
    """
)


class Systemd:
    """The manager's end of $NOTIFY_SOCKET: reads messages with the sender's pid (SO_PASSCRED)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)

    def recv(self, timeout: float = DEADLINE_S) -> tuple[str, int]:
        self.sock.settimeout(timeout)
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
        return data.decode(), pid


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[Systemd, str]]:
    path = str(tmp_path / "notify")
    m = Systemd(path)
    yield m, path
    m.sock.close()


def test_notify_protocol_from_a_child_process(manager: tuple[Systemd, str]) -> None:
    systemd, path = manager
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", DAEMON], env=env, stderr=subprocess.PIPE, text=True)
    try:
        # WATCHDOG_PID is unset here (systemd sets it to the main pid); check the pid gate too.
        assert systemd.recv() == ("READY=1\nSTATUS=started", child.pid)  # NotifyAccess=main
        pings = 0
        deadline = time.monotonic() + DEADLINE_S
        while pings < 3:
            assert time.monotonic() < deadline, "fewer than 3 pings"
            text, pid = systemd.recv()
            assert pid == child.pid
            pings += text == "WATCHDOG=1"
        child.send_signal(signal.SIGTERM)
        text = ""
        while text != "STOPPING=1":
            text, _ = systemd.recv()
        assert child.wait(DEADLINE_S) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE_S)
        assert child.stderr is not None
        stderr = child.stderr.read()
        child.stderr.close()
    assert stderr == ""


def test_watchdog_pid_of_another_process_disables_the_watchdog(manager: tuple[Systemd, str]) -> None:
    _systemd, path = manager
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", "from edgedet.sdnotify import watchdog_interval; print(watchdog_interval())"],
        env=env, capture_output=True, text=True, timeout=DEADLINE_S, check=True,
    )
    assert proc.stdout.strip() == "None"
