# edgedet developer entry points. `make demo` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgedet-installed
ARCH := $(shell uname -m)
# torch builds that pip takes from this machine's disk (x86_64) / the newest CPU-only aarch64
# build on PyPI (2.11 and later pull CUDA 13 libraries; scripts/install.sh's TORCH_AARCH64).
ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.10.0 torchvision==0.25.0
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif
MODEL := models/demo.torchscript
CLIP := .cache/demo/demo.mp4
STILL_CLIPS := .cache/demo/static_scene.mp4 .cache/demo/slow_plume.mp4
PYTEST_ARGS ?=

.PHONY: help venv sysdeps model models-reduced assets demo test unit lint clean arm64-check

help:
	@echo "make demo   - run the daemon on the built-in demo clip, show MQTT messages + latency"
	@echo "make test   - install everything needed and run the whole test suite"
	@echo "make unit   - unit tests only;  make lint - ruff + mypy;  make model - export the demo model"
	@echo "make arm64-check - edgedet inside an arm64 Debian 12 under qemu-user (ARM64_ARGS=--quick: CI's subset)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,export,onnx,openvino,ncnn,int8,fleet,web,profiles]'
	# ultralytics pulls opencv-python (GUI build); the daemon ships with the headless one.
	$(PY) -m pip uninstall -q -y opencv-python || true
	$(PY) -m pip install -q --force-reinstall --no-deps opencv-python-headless
	$(PY) -c "import cv2, torch, paho.mqtt, prometheus_client, yaml; print('venv ok: torch', torch.__version__, 'cv2', cv2.__version__)"
	touch $(STAMP)

sysdeps:
	bash scripts/ci-deps.sh

# The demo's reduced-precision models, calibrated on and checked against frames of the demo clip.
MODEL_BF16 := models/demo-bf16_openvino_model
MODEL_INT8 := models/demo-int8_openvino_model

# The demo's ncnn model (pnnx from the export extra converts it; a few seconds after the trace).
MODEL_NCNN := models/demo_ncnn_model

model: $(MODEL) $(MODEL_NCNN) models-reduced
$(MODEL): | $(STAMP)
	$(PY) scripts/demo_model.py --out $(MODEL)

$(MODEL_NCNN): | $(MODEL)
	$(PY) -m edgedet export --weights .cache/demo-model/best.pt --format ncnn -o $(MODEL_NCNN)

models-reduced: $(MODEL_BF16) $(MODEL_INT8)
$(MODEL_BF16) $(MODEL_INT8): | $(MODEL) $(CLIP)
	$(PY) scripts/demo_model.py --out $(MODEL) --reduced --clip $(CLIP)

assets: $(CLIP) $(STILL_CLIPS)
$(CLIP) $(STILL_CLIPS): | $(STAMP)
	$(PY) scripts/make_clip.py --out-dir .cache/demo

demo: sysdeps venv model assets
	$(PY) scripts/demo.py

unit: venv model
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test: sysdeps venv model assets
	$(PY) -m pytest -q $(PYTEST_ARGS)

# edgedet in an arm64 Debian 12 rootfs under qemu-user (root; cache in /var/cache/edgedet-arm64).
ARM64_ARGS ?=
arm64-check: venv model assets
	bash scripts/arm64_check.sh $(ARM64_ARGS)

lint: venv
	$(VENV)/bin/ruff check edgedet tests scripts
	$(VENV)/bin/mypy edgedet

clean:
	rm -rf $(VENV) models .cache .pytest_cache .mypy_cache .ruff_cache
