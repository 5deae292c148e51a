"""edgedet: an edge video-stream detection daemon (TorchScript YOLOv8 -> MQTT + Prometheus)."""

__version__ = "0.1.0"
