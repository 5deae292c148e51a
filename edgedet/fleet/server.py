"""``edgedet fleet``: one console over every node on the central broker.

Start order: history (SQLite) -> MQTT ingest -> HTTP (uvicorn in its own thread); stop in
reverse on SIGTERM/SIGINT. Exit 0 after a clean stop, 2 for bad arguments (``InputError``).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from edgedet.errors import InputError
from edgedet.fleet.ingest import BrokerSettings

log = logging.getLogger("edgedet.fleet")

JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class FleetOptions:
    broker: BrokerSettings
    prefix: str
    db: Path
    host: str = "127.0.0.1"
    port: int = 8090
    max_events: int = 100_000


def parse_hostport(value: str, default_port: int, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what}: expected HOST[:PORT] with a port 1-65535 (got {value!r})")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(opts: FleetOptions, stop: threading.Event | None = None) -> int:
    try:  # the `fleet` extra: never imported by the daemon
        import uvicorn

        from edgedet.fleet.api import create_app
    except ImportError as exc:
        raise InputError(f"edgedet fleet needs the fleet extra: pip install 'edgedet[fleet]' ({exc})") from None
    from edgedet.fleet.history import History
    from edgedet.fleet.ingest import FleetIngest
    from edgedet.fleet.state import FleetState

    stop = stop or threading.Event()
    if opts.broker.ca and not Path(opts.broker.ca).is_file():
        raise InputError(f"--ca: no such file {opts.broker.ca}")
    state = FleetState(opts.prefix)
    try:
        history = History(opts.db, opts.max_events)
    except (OSError, sqlite3.Error) as exc:
        raise InputError(f"--db {opts.db}: {exc}") from None
    ingest = FleetIngest(opts.broker, state, history)
    server = uvicorn.Server(uvicorn.Config(create_app(state, history, ingest), host=opts.host, port=opts.port,
                                           log_level="warning", access_log=False, lifespan="off"))

    def on_stop(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    ingest.start()
    http = threading.Thread(target=server.run, name="fleet-http", daemon=True)
    http.start()
    announced = False
    try:
        while not stop.wait(0.5):
            if not http.is_alive():
                log.error("fleet HTTP server on %s:%d stopped (port in use?)", opts.host, opts.port)
                return 1
            if server.started and not announced:
                announced = True
                log.info("fleet console on http://%s:%d/ (prefix %s, history %s)", opts.host, opts.port,
                         opts.prefix, opts.db)
    finally:
        server.should_exit = True
        http.join(JOIN_TIMEOUT_S)
        ingest.stop()
        history.close()
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("fleet stopped cleanly")
    return 0
