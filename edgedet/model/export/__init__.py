"""``edgedet export``: an Ultralytics checkpoint -> a model file the daemon runs.

``trace.py`` traces the fused model to TorchScript (the reference) and checks it against eager;
``convert.py`` writes the same module as ONNX or OpenVINO IR and checks it. Both import torch,
Ultralytics, onnx and openvino lazily; the daemon never imports this package.
"""
