"""The web console and REST API (``/api/v1``), served with ``/metrics`` and ``/healthz``.

``live`` (what the pipeline publishes: the newest frame per camera) and ``history`` (events and
feedback in SQLite) import no web framework; ``api`` and ``server`` need the ``web`` extra
(FastAPI + uvicorn) and are imported only when it is installed and ``web.enabled`` is set
(``launch.start_http`` decides).
"""
