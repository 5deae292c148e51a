"""The fleet console's HTTP API and static UI (FastAPI; the ``fleet`` extra).

| route | what |
|---|---|
| ``GET /`` | the fleet console (``static/index.html``: node and camera grid, active events, history) |
| ``GET /api/nodes`` | every node: online, status, uplink, duplicate flag, info, cameras with state, fps, latency |
| ``GET /api/version`` | ``{"version": n}``, bumped on every change (a cheap poll) |
| ``GET /api/events/active`` | the active events of every node |
| ``GET /api/events?node=&limit=`` | event history (SQLite), most recent first |
| ``GET /api/events/{node}/{id}/snapshot.jpg`` | the event's snapshot (from the retained snapshot topic) |
| ``POST /api/events/{node}/{id}/verdict`` | ``{"verdict": "true_positive"}`` or false_positive -> feedback |
| ``GET /healthz`` | 200 while connected to the central broker, else 503 |

Handlers read snapshots of ``FleetState`` (under its lock, never blocking the MQTT thread for long).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from edgedet.fleet.history import History
from edgedet.fleet.ingest import FleetIngest
from edgedet.fleet.state import FleetState

__all__ = ["create_app"]


class VerdictIn(BaseModel):
    verdict: str


def create_app(state: FleetState, history: History, ingest: FleetIngest) -> FastAPI:
    app = FastAPI(title="edgedet fleet", docs_url=None, redoc_url=None)
    static = resources.files("edgedet.fleet").joinpath("static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")), headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok = ingest.connected.is_set()
        return JSONResponse({"broker_connected": ok, "nodes": len(state.nodes())}, status_code=200 if ok else 503)

    @app.get("/api/version")
    def version() -> dict[str, int]:
        return {"version": state.version}

    @app.get("/api/nodes")
    def nodes() -> dict[str, Any]:
        return {"version": state.version, "nodes": state.nodes()}

    @app.get("/api/events/active")
    def active() -> list[dict[str, Any]]:
        return state.active_events()

    @app.get("/api/events")
    def events(node: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return history.events(node, max(1, min(limit, 1000)))

    @app.get("/api/events/{node}/{event_id}/snapshot.jpg")
    def snapshot(node: str, event_id: str) -> Response:
        jpeg = history.snapshot(node, event_id)
        if jpeg is None:
            raise HTTPException(404, f"no snapshot for event {event_id} of node {node}")
        return Response(jpeg, media_type="image/jpeg")

    @app.post("/api/events/{node}/{event_id}/verdict")
    def verdict(node: str, event_id: str, body: VerdictIn) -> dict[str, Any]:
        camera = history.event_camera(node, event_id)
        if camera is None:
            raise HTTPException(404, f"no event {event_id} of node {node}")
        try:
            return ingest.post_verdict(node, event_id, camera, body.verdict)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
