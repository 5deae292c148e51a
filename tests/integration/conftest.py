"""Fixtures for the daemon tests: ``edgedet run`` as a subprocess against the ``mosquitto`` broker,
watched by a subscriber on everything the node publishes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.daemoncfg import write_config
from tests.helpers import DaemonProcess, MosquittoBroker, MqttSubscriber, run_daemon, stop_daemon

#: The ``node_id`` that ``write_config`` writes by default.
NODE = "testnode"


class Daemon(NamedTuple):
    proc: DaemonProcess
    sub: MqttSubscriber  # subscribed to edgedet/<NODE>/# before the daemon started
    metrics_port: int


@pytest.fixture
def start_daemon(
    tmp_path: Path, mosquitto: MosquittoBroker, mqtt_sub: Callable[..., MqttSubscriber]
) -> Iterator[Callable[..., Daemon]]:
    """``start(cameras, *, env=None, **sections) -> Daemon(proc, sub, metrics_port)``.

    Writes the config (``write_config(tmp_path, cameras, mosquitto.port, **sections)``), subscribes
    to ``edgedet/testnode/#`` and starts the daemon. A daemon the test left running is stopped at
    teardown (SIGTERM by PID); a test that checks the exit code stops it itself.
    """
    procs: list[DaemonProcess] = []

    def start(cameras: dict[str, dict[str, Any]], *, env: Mapping[str, str] | None = None,
              **sections: Any) -> Daemon:
        cfg, metrics_port = write_config(tmp_path, cameras, mosquitto.port, **sections)
        sub = mqtt_sub(mosquitto, f"edgedet/{NODE}/#")
        proc = run_daemon(cfg, env=env)
        procs.append(proc)
        return Daemon(proc, sub, metrics_port)

    yield start
    for proc in procs:
        stop_daemon(proc)
