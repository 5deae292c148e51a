"""``edgedet fleet``: the central console over every node on one MQTT broker (docs/FLEET.md).

``state.py`` (latest state, pure), ``history.py`` (SQLite), ``ingest.py`` (the MQTT subscriber),
``api.py`` + ``static/`` (FastAPI console, the ``fleet`` extra), ``server.py`` (start/stop order).
"""
