# syntax=docker/dockerfile:1
# streamd container image.
#   docker build -t streamd .
#   docker run --rm -v $PWD/streamd.toml:/etc/streamd/streamd.toml:ro \
#     -v $PWD/token:/run/secrets/x/x_bearer_token:ro -v streamd-spool:/var/lib/streamd \
#     -p 9464:9464 streamd
# (set http.listen = "0.0.0.0:9464" in the config to reach /metrics from outside.)

# --- builder: build the wheel, install it and its dependencies into a venv ---------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamd/ streamd/

# Every dependency ships manylinux wheels for CPython 3.11: no compiler needed. No extras:
# the image runs the daemon; the demo's local broker (the `demo` extra) stays out.
RUN python -m venv /opt/streamd \
    && python -m pip wheel --no-deps --wheel-dir /tmp/dist . \
    && /opt/streamd/bin/pip install /tmp/dist/streamd-*.whl \
    && /opt/streamd/bin/pip uninstall --yes pip \
    && install -d -m 0700 /rootfs/var/lib/streamd/spool

# --- final: the Python runtime and the venv, nothing else ----------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="streamd" \
      org.opencontainers.image.description="X API v2 filtered stream to Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"

# Same base image as the builder, so the venv's interpreter path resolves unchanged.
COPY --from=builder /opt/streamd /opt/streamd
# The spool lives here; owned by the runtime user so the image works without a volume too.
COPY --from=builder --chown=10001:10001 /rootfs/var/lib/streamd /var/lib/streamd

ENV PATH="/opt/streamd/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric UID/GID: Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 10001:10001
WORKDIR /var/lib/streamd
VOLUME ["/var/lib/streamd"]
EXPOSE 9464

# /livez answers while the event loop turns (Kubernetes uses its own probes instead).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/livez', timeout=4)"]

# Exec form: streamd is PID 1 and receives SIGTERM itself (flush, then exit 0).
ENTRYPOINT ["streamd"]
CMD ["run", "-c", "/etc/streamd/streamd.toml"]
