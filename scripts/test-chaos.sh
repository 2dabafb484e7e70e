#!/usr/bin/env bash
# tests/chaos: three `keyturn serve` replicas on a PostgreSQL cluster of the tests' own,
# which they restart, stop, fail over to a promoted standby, and whose sessions they kill;
# the scheduler's leader is killed with SIGKILL and stalled with SIGSTOP. One test at a
# time: they measure failover on the wall clock (the figures are printed at the end).
# Exits 77 when PostgreSQL's binaries are not installed (scripts/services.sh installs them
# as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  echo "PostgreSQL is not installed: the chaos tests cannot run" >&2
  exit 77
fi
exec .venv/bin/pytest -q tests/chaos
