# syntax=docker/dockerfile:1
# One image for every streamrec program: `streamrec api` (the default), `streamrec worker`,
# `streamrec simulate`, `streamrec replay`, `streamrec topics`, ... (docker-compose.yml runs each).

# --- build: install streamrec and its pinned dependencies into a virtualenv ---------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/streamrec
WORKDIR /src
COPY . .
RUN /opt/streamrec/bin/pip install .

# --- runtime: the virtualenv only, run as an unprivileged user ---------------------------------------
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 streamrec \
    && useradd --system --uid 10001 --gid streamrec --home-dir /app --shell /usr/sbin/nologin streamrec \
    && mkdir -p /app/data \
    && chown -R streamrec:streamrec /app
COPY --from=build /opt/streamrec /opt/streamrec
ENV PATH=/opt/streamrec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMREC_API_HOST=0.0.0.0 \
    STREAMREC_METRICS_HOST=0.0.0.0 \
    STREAMREC_WORKER_DATA_DIR=/app/data/worker \
    STREAMREC_API_METRICS_DIR=/app/data/api-metrics \
    STREAMREC_LOG_FORMAT=json \
    HEALTHCHECK_URL=http://127.0.0.1:8000/healthz
WORKDIR /app
USER streamrec:streamrec
EXPOSE 8000 9101 9102
# The API answers /healthz; a worker or the simulator sets HEALTHCHECK_URL to its /metrics.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["streamrec"]
CMD ["api"]
