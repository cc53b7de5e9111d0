# syntax=docker/dockerfile:1
# Wallaby Gateway image: a slim, non-root Python runtime configured only through
# environment variables (see docs/deployment.md and gateway/config.py).
#
#   docker build -t wallaby-gateway .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -e COUCHDB_URL=http://couchdb:5984 -e COUCHDB_USER=... -e COUCHDB_PASSWORD=... \
#     wallaby-gateway
#
# The image has no Node.js, so it never starts the embedded development server:
# COUCHDB_URL must point at a real CouchDB.

ARG PYTHON_VERSION=3.12

# --- build: install the package and its dependencies into a self-contained venv ----------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AUTOBAHN_USE_NVX=0
RUN python -m venv /opt/venv
WORKDIR /src
# README.md* so a checkout without the README still builds (pyproject names it as readme).
# LICENSE: pyproject's license-files, which the wheel (and so the image) carries.
COPY pyproject.toml LICENSE README.md* ./
COPY gateway ./gateway
# The contract is data the gateway loads at start-up: gateway/api_schema is a symlink to
# it, and the wheel carries it inside the package (see gateway/schemas.py).
COPY api_schema ./api_schema
RUN /opt/venv/bin/pip install --no-compile . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --- runtime: only the venv, the one-shot setup script and an unprivileged user ----------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 wallaby \
 && useradd --system --uid 10001 --gid wallaby --home-dir /app --no-create-home \
    --shell /usr/sbin/nologin wallaby
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/couchdb_setup.py /app/deploy/couchdb_setup.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WALLABY_HOST=0.0.0.0 \
    WALLABY_PORT=8080
USER wallaby:wallaby
EXPOSE 8080
# Liveness only (/health: the process serves HTTP). Load balancers use /ready instead,
# which also checks that CouchDB is reachable.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('WALLABY_PORT', '8080'), timeout=2)"]
# Exec form: python is the process that receives SIGTERM; the gateway stops accepting,
# drains in-flight requests for WALLABY_SHUTDOWN_GRACE seconds and closes WebSockets.
# (compose also sets `init: true` so a tiny init reaps zombies and forwards signals.)
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["run"]
