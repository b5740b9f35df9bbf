# syntax=docker/dockerfile:1
# datapool_pipeline code location image: runs the Dagster code server (gRPC, port 4000) that the webserver,
# the daemon and the run launcher talk to; runs and steps launched by K8sRunLauncher / k8s_job_executor use
# the same image. What gets installed is decided by deploy/image/install.sh alone (scripts/check_image.sh
# runs it too). Build (BuildKit):
#
#   docker build -t REGISTRY/datapool-pipeline:TAG --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> .
#
# With TORCH_INDEX_URL set to PyTorch's CPU wheel index the image holds a CPU-only torch; left empty, torch
# comes from the default index (CUDA build, for GPU nodes). See deploy/README.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a compiler, and wheels of everything (hnswlib has no wheel for every platform) ----
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ARG TORCH_INDEX_URL=""
ARG TORCH_PACKAGES=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/image/install.sh /usr/local/bin/datapool-install.sh
COPY pyproject.toml README.md ./
COPY datapool_pipeline ./datapool_pipeline
RUN sh /usr/local/bin/datapool-install.sh wheels /src /wheels

# ---- runtime: slim, no compiler; ffmpeg and Chromium (kaleido figures in report.pdf) from Debian ----
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg chromium \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/image/install.sh /usr/local/bin/datapool-install.sh
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    sh /usr/local/bin/datapool-install.sh install /wheels

WORKDIR /app
COPY dagster.yaml datasets.yaml ./
# DATAPOOL_DATASETS: mount your datasets.yaml here (the Helm values mount the ConfigMap datapool-datasets).
# DAGSTER_HOME: the embedded default instance; on Kubernetes the chart sets DAGSTER_HOME to the folder
# holding its instance ConfigMap.
ENV DAGSTER_HOME=/dagster_home \
    DATAPOOL_DATASETS=/app/datasets.yaml
RUN mkdir -p /dagster_home && cp /app/dagster.yaml /dagster_home/dagster.yaml
VOLUME ["/dagster_home"]
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "datapool_pipeline.definitions"]
