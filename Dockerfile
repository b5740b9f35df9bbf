# datapool_pipeline: Dagster code location with ffmpeg and Chromium (for report figures).
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg chromium poppler-utils \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
COPY pyproject.toml README.md ./
COPY datapool_pipeline ./datapool_pipeline
RUN pip install --no-cache-dir .
COPY dagster.yaml workspace.yaml datasets.yaml ./

ENV DAGSTER_HOME=/dagster_home \
    DATAPOOL_DATASETS=/app/datasets.yaml
RUN mkdir -p /dagster_home && cp /app/dagster.yaml /dagster_home/dagster.yaml
VOLUME ["/dagster_home"]
EXPOSE 3000
CMD ["dagster", "dev", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/workspace.yaml"]
