"""The output stage: MQTT topics (``topics.py``), the pure per-frame payload (``payload.py``), the
publisher with its reconnect and retained state (``client.py``), its TLS setup (``tls.py``), the
on-disk outbox (``outbox.py``) and the thread that replays it (``sender.py``)."""
