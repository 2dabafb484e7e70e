#!/usr/bin/env bash
# Every check and test, in the order a reviewer would want them to fail.
# Usage: scripts/test.sh [lint]   (lint: only the static checks)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
export PATH="$BIN:$PATH"
passed=0
skipped=()
durations=()
step() {
  stage_name=$1
  stage_started=$EPOCHREALTIME
  printf '\n== %s\n' "$*"
}
elapsed() { awk -v a="$stage_started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%5.0f s", b - a }'; }
done_stage() {
  passed=$((passed + 1))
  durations+=("$(elapsed)  $stage_name")
}
# A stage script that exits 77 could not run here (its tool cannot be installed); with
# KEYTURN_REQUIRE_ALL set it fails instead, so CI never skips.
run_stage() {
  local rc=0
  "$@" || rc=$?
  case $rc in
    0) done_stage ;;
    77) skipped+=("$stage_name") ;;
    *) exit "$rc" ;;
  esac
}

# A stage far past its usual time has hung: it is stopped, and fails the run in minutes
# with its name, instead of using up CI's whole budget. SIGTERM reaches the pytest
# workers too, and each prints its threads' stacks on the way out (tests/conftest.py).
bounded() {
  local minutes=$1 rc=0
  shift
  timeout --kill-after=60 "${minutes}m" "$@" || rc=$?
  if [ "$rc" = 124 ]; then
    echo "stage '$stage_name' ran past $minutes minutes and was stopped" >&2
  fi
  return "$rc"
}

step "format and lint (ruff), types (mypy)"
lint_paths="server tests bench clients/python/keyturn clients/policy examples/python scripts"
ruff format --check $lint_paths
ruff check $lint_paths
mypy  # server, client and bench, strict (pyproject.toml)
mypy --strict clients/policy/scripted_server.py  # the client suites' scripted server
python scripts/lock.py check  # the image's pinned dependencies still satisfy the pyprojects
done_stage

step "API contract (buf lint, buf breaking against the previous commit)"
buf lint
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto 2>/dev/null; then
  buf breaking --against ".git#ref=HEAD~1"
fi
done_stage

step "generated code matches proto/"
PYTHON=$BIN/python scripts/generate.sh
generated="clients/python/keyturn/v1 clients/go/gen clients/node/src/gen server/keyturn_server/api/http/openapi.json"
if [ -n "$(git status --porcelain -- $generated)" ]; then
  git status --porcelain -- $generated
  echo "generated code is stale: run 'make generate' and commit the result" >&2
  exit 1
fi
done_stage
[ "${1:-}" = lint ] && exit 0

step "services the tests need"
# shellcheck source=scripts/services.sh
. scripts/services.sh

# Two workers: the long suites (soak, crash) run beside the rest. The chaos tests have a
# stage of their own below.
step "pytest (SQLite, the embedded default)"
bounded 25 pytest -q -n 2 --dist loadfile --ignore=tests/chaos
done_stage

# The token checks have two implementations (crypto/native.py): the suite above ran the
# native one where it is built; the tests that present tokens run again on the Python one.
step "pytest (pure-Python token checks: KEYTURN_NATIVE=0)"
KEYTURN_NATIVE=0 bounded 5 pytest -q -n 2 --dist loadfile tests/test_token_checks.py tests/test_handles.py \
  tests/test_auth.py tests/test_token_cli.py tests/test_watch.py
done_stage

if [ -n "${KEYTURN_TEST_POSTGRES_URL:-}" ]; then
  step "pytest (PostgreSQL: the same service tests, and several replicas on one database)"
  KEYTURN_TEST_BACKEND=postgres bounded 12 pytest -q -n 2 --dist loadfile tests/test_keys.py tests/test_handles.py \
    tests/test_admin.py tests/test_auth.py tests/test_lifecycle.py tests/test_watch.py \
    tests/test_replicas.py tests/test_coalesce.py tests/test_status.py tests/test_leadership.py \
    tests/security/test_forged_rows.py tests/security/test_audit_anchor.py \
    tests/security/test_nonce_budget.py tests/security/test_caps.py tests/test_key_cache.py \
    tests/test_decoded_rows.py tests/test_clock_steps.py tests/test_pg_read_only.py \
    tests/test_schema_upgrade.py tests/test_pg_locks.py tests/test_report_threads.py \
    tests/test_audit_retention.py tests/test_page_totals.py tests/security/test_watch_reads.py \
    tests/security/test_floods.py tests/security/test_signing_threads.py tests/test_key_versions.py \
    tests/security/test_takeover.py tests/test_version_containment.py \
    tests/security/test_store_failure_disclosure.py tests/test_page_sizes.py \
    tests/test_pg_destroyed_material.py tests/test_pg_row_macs.py tests/test_replica_clocks.py
  done_stage
fi

step "chaos: replicas on a PostgreSQL cluster that is restarted, failed over and killed"
run_stage bounded 15 scripts/test-chaos.sh

step "clients, examples and grpcurl against a live server"
bounded 12 scripts/test-clients.sh
done_stage

step "release artifacts (version, wheels and sdists, npm pack, jars, Go module) into dist/"
bounded 10 scripts/test-artifacts.sh
done_stage

step "container image (podman build, smoke test: TLS, non-root, read-only, restart, stop)"
run_stage bounded 15 scripts/test-container.sh

echo
printf '%s\n' "${durations[@]}"
if [ ${#skipped[@]} -gt 0 ]; then echo "skipped: ${skipped[*]}"; fi
echo "stages: $passed passed, 0 failed"  # any failure has stopped the script before this
