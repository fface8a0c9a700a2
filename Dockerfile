# One image for every worker and the bridge; compose.yaml picks the part per container.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 mesh
USER mesh
ENV LOG_FORMAT=json
ENTRYPOINT ["mesh"]
