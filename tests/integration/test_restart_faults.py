"""Issue 10, restarts and exit codes, against the real daemon:

- a reload that restarts every camera of a one-camera node never ends the run (exit 0 would leave the
  unit stopped under ``Restart=on-failure``);
- SIGTERM while a reload waits for a model file that hangs (a FIFO standing in for a hung mount) still
  stops the daemon within ``TimeoutStopSec``;
- a machine that is not ready (CUDA not up at boot) exits 75, which systemd restarts, not 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemoncfg import write_config
from tests.helpers import run_daemon, stop_daemon, tail, wait_for

pytestmark = pytest.mark.integration

NODE = "testnode"
START_S = 120.0  # model load + first frames on a loaded 2-core box
STEP_S = 60.0
RELOADS = 12
TIMEOUT_STOP_S = 20.0  # systemd/edgedet.service TimeoutStopSec


def detections_since(sub: Any, camera: str, since: float) -> list[dict[str, Any]]:
    topic = f"edgedet/{NODE}/{camera}/detections"
    return [json.loads(m.payload) for m in sub.messages(topic) if m.time >= since]


def test_a_one_camera_node_survives_many_reloads_that_restart_its_camera(
    tmp_path: Path, mosquitto: Any, mqtt_sub: Any, assets: Any
) -> None:
    cameras = {"clip": {"url": str(assets.clip), "loop": True, "fps_limit": 5}}
    workers = {"count": 2, "threads_per_worker": 1}  # two workers polling the hub: more chances to hit the gap
    cfg, metrics_port = write_config(tmp_path, cameras, mosquitto.port, workers=workers)
    sub = mqtt_sub(mosquitto, f"edgedet/{NODE}/#")
    proc = run_daemon(cfg)
    try:
        wait_for(lambda: detections_since(sub, "clip", 0.0), START_S, "the first detections")
        for i in range(RELOADS):
            cameras["clip"]["fps_limit"] = 6 if i % 2 == 0 else 5  # a capture setting: the camera restarts
            write_config(tmp_path, cameras, mosquitto.port, workers=workers, metrics_port=metrics_port)
            before = proc.output().count("config reloaded: cameras restarted: clip")
            proc.send_signal(signal.SIGHUP)

            def reloaded(before: int = before) -> bool:
                assert proc.poll() is None, f"the daemon exited with {proc.returncode}:\n{tail(proc.output())}"
                return proc.output().count("config reloaded: cameras restarted: clip") > before

            wait_for(reloaded, STEP_S, f"reload {i + 1}")
        last = time.monotonic()
        wait_for(lambda: detections_since(sub, "clip", last), STEP_S, "detections after the last reload")
        assert proc.poll() is None, tail(proc.output())
        assert "all cameras ended" not in proc.output()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT_STOP_S)
    finally:
        stop_daemon(proc)
    assert code == 0, tail(proc.output())


def test_sigterm_while_a_reload_waits_for_a_hung_model_file_stops_in_time(
    tmp_path: Path, mosquitto: Any, mqtt_sub: Any, assets: Any
) -> None:
    if importlib.util.find_spec("openvino") is None:  # not imported here: it starts threads
        pytest.skip("openvino is not installed")
    cameras = {"clip": {"url": str(assets.clip), "loop": True}}
    cfg, metrics_port = write_config(tmp_path, cameras, mosquitto.port)
    sub = mqtt_sub(mosquitto, f"edgedet/{NODE}/clip/detections")
    proc = run_daemon(cfg)
    hung = tmp_path / "hung_openvino_model"
    hung.mkdir()
    fifo = hung / "hung.xml"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes, reading until data comes
    writer: list[int] = []
    opener = threading.Thread(target=lambda: writer.append(os.open(fifo, os.O_WRONLY)), daemon=True)
    try:
        wait_for(lambda: sub.messages(), START_S, "the first detections")
        write_config(tmp_path, cameras, mosquitto.port, metrics_port=metrics_port, model={"path": str(hung)})
        opener.start()
        proc.send_signal(signal.SIGHUP)
        opener.join(STEP_S)  # returns once the daemon opened the model file: its load now hangs in read()
        assert writer, f"the reload never opened the model file:\n{tail(proc.output())}"
        seen = len(sub.messages())
        wait_for(lambda: len(sub.messages()) > seen, STEP_S, "detections with the old model during the hung load")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT_STOP_S)
        stop_s = time.monotonic() - t0
    finally:
        stop_daemon(proc)
        if opener.is_alive():  # the daemon never opened it: let the writer's open() return
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            opener.join(5)
        for fd in writer:
            os.close(fd)
    assert code == 0, tail(proc.output())
    assert stop_s < TIMEOUT_STOP_S / 2, f"stopped {stop_s:.1f} s after SIGTERM"
    assert "stopping during a reload; the new model" in proc.output()
    print(f"SIGTERM during a hung model load: stopped in {stop_s:.2f} s")


def test_cuda_not_ready_exits_75_for_a_systemd_restart(tmp_path: Path, mosquitto: Any) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg, _ = write_config(tmp_path, {"clip": {"url": "rtsp://127.0.0.1:1/x"}}, mosquitto.port,
                          model={"device": "cuda"})
    proc = run_daemon(cfg)
    code = proc.wait(timeout=START_S)
    output = proc.output()
    assert code == 75, output
    assert "error: model.device cuda: CUDA is not available on this machine (yet)" in output
    assert "Traceback" not in output
