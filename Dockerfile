# syntax=docker/dockerfile:1
# One image for every streamrec program: `streamrec api` (the default), `streamrec worker`,
# `streamrec simulate`, `streamrec replay`, `streamrec topics`, ... (docker-compose.yml runs each).

# --- build: install streamrec and its pinned dependencies into a virtualenv ---------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Another package index: --build-arg PIP_INDEX_URL=... (build stage only; nothing of it reaches the runtime).
ARG PIP_INDEX_URL=https://pypi.org/simple
RUN python -m venv /opt/streamrec
WORKDIR /src
COPY . .
# Behind a TLS-inspecting proxy pip needs that proxy's CA: pass a bundle as the build secret pip-ca
# (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`); it is mounted for this step only.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/streamrec/bin/pip install .

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
    STREAMREC_LOG_FORMAT=json
WORKDIR /app
USER streamrec:streamrec
EXPOSE 8000 9101 9102
# `streamrec healthcheck` probes the API's /healthz on STREAMREC_API_PORT; a worker or the simulator sets
# HEALTHCHECK_URL to its /metrics. The HEALTHCHECK is kept only in the Docker image format (podman:
# `build --format docker`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["streamrec", "healthcheck"]
ENTRYPOINT ["streamrec"]
CMD ["api"]
