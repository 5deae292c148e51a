"""The capture stage: frame sources (``worker.py`` holds ``FrameSource`` / ``OpenCvSource`` and
the ``CaptureWorker`` thread per camera) and the running set of cameras (``cameras.py``)."""
