# Keyturn server image: the same `keyturn serve` as everywhere else, as a non-root user,
# with the data directory on a volume and the master key from the environment.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients/python/keyturn ./clients/python/keyturn
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin keyturn \
    && mkdir -p /data && chown keyturn:keyturn /data && chmod 0700 /data
COPY --from=build /install /usr/local
USER keyturn
ENV DATA_DIR=/data \
    KEYTURN_ENV=production \
    LOG_LEVEL=info
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "keyturn_server.probe", "127.0.0.1:50051"]
CMD ["keyturn", "serve", "--listen", "0.0.0.0:50051"]
