"""Which HTTP server runs on ``metrics.host:metrics.port``, decided without importing an extra the
config does not use:

- ``web.enabled`` and the ``web`` extra installed: the console (``edgedet.web.server`` + ``api``):
  ``/metrics``, ``/healthz``, ``/api/v1`` and the UI;
- otherwise: the small ``/metrics`` + ``/healthz`` server of ``edgedet.metrics``;
- ``metrics.enabled: false``: none.

``start_http`` returns an :class:`Http` that the app wires in: ``live`` for the result sink,
``events_publisher`` for the event stage (records the history), ``set_model`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path

from edgedet.config.sections import MetricsConfig, WebConfig
from edgedet.metrics import HealthCheck, Metrics, serve, stop_server
from edgedet.outputs.client import MqttPublisher
from edgedet.pipeline import LoadedModel
from edgedet.web.feedback import Feedback, Publisher, RecordingPublisher
from edgedet.web.history import EventHistory
from edgedet.web.live import LiveFrames
from edgedet.web.status import Console

__all__ = ["Http", "start_http", "web_extra_installed"]

log = logging.getLogger("edgedet.web")


def web_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("fastapi", "uvicorn"))


class Http:
    """The running HTTP side (or none); ``console`` is None unless the web console runs."""

    def __init__(self, console: Console | None = None, stop: Callable[[], None] | None = None,
                 url: str | None = None) -> None:
        self.console = console
        self.url = url  # the console's address (for <node>/info), None without the console
        self.live: LiveFrames | None = console.live if console is not None else None
        self._stop = stop

    def events_publisher(self, publisher: MqttPublisher) -> Publisher:
        """What the event stage publishes through: the publisher, recording into the history."""
        if self.console is None:
            return publisher
        frames = (self.console.state_dir / "web" / "frames") if self.console.web.feedback.export_dataset else None
        return RecordingPublisher(publisher, self.console.history, self.console.live, frames)

    def set_model(self, model: LoadedModel) -> None:
        if self.console is not None:
            self.console.set_model(model)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def _open_history(state_dir: Path, web: WebConfig) -> EventHistory:
    path = state_dir / "web" / "history.sqlite3"
    try:
        return EventHistory(path, web.history)
    except (sqlite3.Error, OSError) as exc:
        log.warning("web history: cannot open %s (%s); keeping events in memory until a restart", path, exc)
        return EventHistory(":memory:", web.history)


def start_http(metrics_cfg: MetricsConfig, web: WebConfig, *, node: str, state_dir: str | Path, metrics: Metrics,
               health: HealthCheck, publisher: MqttPublisher, cameras: Callable[[], list[str]],
               broker: str) -> Http:
    """Start the server the config asks for (raises ConfigError / EnvironmentFault when it cannot bind)."""
    if not metrics_cfg.enabled:
        return Http()
    if not (web.enabled and web_extra_installed()):
        if web.enabled:
            log.warning("web console off: the web extra is not installed (pip install 'edgedet[web]'); "
                        "serving /metrics and /healthz only")
        server: tuple[ThreadingHTTPServer, threading.Thread] = serve(metrics.registry, metrics_cfg.host,
                                                                       metrics_cfg.port, health)
        return Http(stop=lambda: stop_server(*server))
    from edgedet.web.api import create_app  # the extra: imported only when it is used
    from edgedet.web.server import WebServer

    folder = Path(state_dir)
    live = LiveFrames()
    history = _open_history(folder, web)
    holder: list[Console] = []

    def names() -> Sequence[str]:
        model = holder[0].model if holder else None
        return () if model is None else model.detector.info.names

    dataset = folder / "dataset" if web.feedback.export_dataset else None
    feedback = Feedback(history, publisher, publisher.topics, dataset, names)
    console = Console(node=node, web=web, state_dir=folder, broker=broker, metrics=metrics, live=live,
                      history=history, feedback=feedback, cameras=cameras, connected=lambda: publisher.connected,
                      health=health)
    holder.append(console)
    closing = asyncio.Event()
    try:
        web_server = WebServer(create_app(console, closing), metrics_cfg.host, metrics_cfg.port,
                               request_timeout_s=web.request_timeout_s, max_connections=web.max_connections,
                               on_tick=console.sample)
    except BaseException:
        history.close()
        raise
    web_server.closing = closing
    history.start()
    web_server.start()

    def stop() -> None:
        web_server.stop()
        live.close()
        history.flush(2.0)
        history.close()

    host = metrics_cfg.host if metrics_cfg.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
    host = f"[{host}]" if ":" in host else host
    return Http(console, stop, f"http://{host}:{web_server.server_address[1]}/")
