# Sourced by scripts/test.sh: starts the services the tests need and exports where they
# are. PostgreSQL: a throwaway cluster in a temp dir on a free loopback port (installed
# from Debian's packages first when missing and we are root). grpcurl: built with go.

_keyturn_free_port() {
  "${BIN:-.venv/bin}/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

_keyturn_pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_postgres() {
  if [ -n "${KEYTURN_TEST_POSTGRES_URL:-}" ]; then
    echo "PostgreSQL given: using KEYTURN_TEST_POSTGRES_URL"
    return 0
  fi
  if [ -z "$(_keyturn_pg_bin)" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing PostgreSQL (Debian packages)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 || {
        apt-get update -q >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
      }
    elif [ -n "${KEYTURN_REQUIRE_ALL:-}" ]; then
      echo "PostgreSQL is not installed and cannot be installed here (not root)" >&2
      return 1
    else
      echo "PostgreSQL is not installed: its tests will be skipped" >&2
      return 0
    fi
  fi
  local bin run port
  bin=$(_keyturn_pg_bin)
  KEYTURN_PGDATA=$(mktemp -d /tmp/keyturn-pg.XXXXXX)
  run=""
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$KEYTURN_PGDATA"
    run="runuser -u postgres --"
  fi
  port=$(_keyturn_free_port)
  $run "$bin/initdb" -D "$KEYTURN_PGDATA/data" -A trust -U keyturn --no-sync >/dev/null
  $run "$bin/pg_ctl" -D "$KEYTURN_PGDATA/data" -l "$KEYTURN_PGDATA/log" -w start \
    -o "-p $port -k $KEYTURN_PGDATA -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" >/dev/null
  export KEYTURN_TEST_POSTGRES_URL="postgresql://keyturn@127.0.0.1:$port/postgres"
  export KEYTURN_PG_STOP="$run $bin/pg_ctl -D $KEYTURN_PGDATA/data -m immediate stop"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

stop_services() {
  if [ -n "${KEYTURN_PG_STOP:-}" ]; then
    $KEYTURN_PG_STOP >/dev/null 2>&1 || true
    unset KEYTURN_PG_STOP
  fi
  if [ -n "${KEYTURN_PGDATA:-}" ]; then
    rm -rf "$KEYTURN_PGDATA"
    unset KEYTURN_PGDATA
  fi
}

# grpcurl, for the operators' walkthrough (tests/client/test_grpcurl_walkthrough.py):
# built once into tools/bin at the walkthrough's pinned version.
install_grpcurl() {
  if [ -x tools/bin/grpcurl ] || command -v grpcurl >/dev/null; then
    return 0
  fi
  if command -v go >/dev/null; then
    scripts/grpcurl-walkthrough.sh --install
  elif [ -n "${KEYTURN_REQUIRE_ALL:-}" ]; then
    echo "grpcurl is not installed and go is not there to build it" >&2
    return 1
  else
    echo "grpcurl is not installed: its walkthrough will be skipped" >&2
  fi
}

trap stop_services EXIT  # set first: a failed start still removes its temp cluster
start_postgres
install_grpcurl
