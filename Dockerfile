# Keyturn server image: the same `keyturn serve` as everywhere else, as a non-root user,
# with the data directory on a volume, the master key from the environment and TLS from
# a certificate mounted at /tls (tls.crt, tls.key: a Kubernetes TLS secret's layout).
# Runs with a read-only root filesystem and no capabilities (see docker-compose.yml).
#
#   docker build -t keyturn .                       # or: podman build --format docker ...
#   docker build --build-arg BASE=my-registry/python:3.11-slim -t keyturn .
#
# BASE is a Debian image with Python 3.11+ as /usr/local/bin/python and pip: the official
# python:3.11-slim, or one made from Debian's packages by scripts/container-base.sh for
# hosts without a registry.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
# A CA bundle for pip, only when a TLS-intercepting proxy sits in front of the package
# index: mount it into the build and name it here (nothing of it stays in the image).
ARG PIP_CERT
# The dependencies first, exactly as locked and checked against their hashes
# (requirements/runtime.txt, scripts/lock.py): the image ships what CI tested, and a
# release replaced upstream is refused rather than built in. Their own layer, so a code
# change does not download them again.
COPY requirements/runtime.txt ./requirements/
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install \
        --require-hashes --only-binary=:all: -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients/python ./clients/python
# Two distributions: the client `keyturn` (stubs and the client the operator commands
# use) and `keyturn-server`, which requires exactly that version of it. --no-deps: every
# dependency is installed above, pinned; one missing from the lock fails the smoke test.
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install --no-deps \
        ./clients/python .

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="keyturn" \
      org.opencontainers.image.description="Key management and rotating workflow handles behind a gRPC API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini as PID 1: the kernel drops signals to PID 1 that have no handler yet, so a SIGTERM
# arriving while Python starts would be lost and a stop would wait out its grace period.
# A fixed numeric uid and gid, so orchestrators can check runAsNonRoot and volumes can be
# prepared for it. /tls is only a mount point.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --gid 10001 keyturn \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin keyturn \
    && mkdir -p /data /tls \
    && chown 10001:10001 /data && chmod 0700 /data
COPY --from=build /install /usr/local
USER 10001:10001
# From /, the operator commands find the admin token at ./data/admin.token.
WORKDIR /
ENV DATA_DIR=/data \
    KEYTURN_ENV=production \
    KEYTURN_TLS_DIR=/tls \
    LOG_LEVEL=info \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
# gRPC, and HTTP/JSON (the /v1 API, Server-Sent Events, the specification's REST API).
EXPOSE 50051 8080
# SIGTERM drains streams and flushes the store; the default grace (10 s) covers it.
STOPSIGNAL SIGTERM
# The probe speaks TLS when a certificate is mounted and trusts exactly that one.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "keyturn_server.probe", "127.0.0.1:50051"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["keyturn", "serve", "--listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:8080"]
