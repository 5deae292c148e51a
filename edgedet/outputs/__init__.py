"""The output stage: MQTT topics (``topics.py``), the pure per-frame payload (``payload.py``), the
publisher with its TLS setup and reconnect (``client.py``), and the on-disk outbox (``outbox.py``)."""
