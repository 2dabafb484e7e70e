#!/usr/bin/env bash
# Starts one live server (SQLite, a temp data dir, a random master key) and the scripted
# policy server (clients/policy), and runs against them every client's run-tests.sh, the
# Python example, and the grpcurl and curl walkthroughs.
# A suite whose toolchain is missing is reported and skipped, never silently passed; with
# KEYTURN_REQUIRE_ALL set (CI) it fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=$root/.venv/bin

data=$(mktemp -d "${TMPDIR:-/tmp}/keyturn-clients.XXXXXX")
free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http_port=$(free_port)
MASTER_KEY=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))') \
  LOG_LEVEL=warning "$BIN/keyturn" serve --data-dir "$data" --listen "127.0.0.1:$port" \
  --http-listen "127.0.0.1:$http_port" \
  --caller-rate-limit 0 --heartbeat 1s >"$data/server.log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 150); do
  grep -q "listening on" "$data/server.log" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$data/server.log" >&2; exit 1; }
  sleep 0.2
done
export KEYTURN_ADDRESS="127.0.0.1:$port"
KEYTURN_TOKEN=$(cat "$data/admin.token")
export KEYTURN_TOKEN KEYTURN_BIN="$BIN/keyturn"
echo "live server on $KEYTURN_ADDRESS"

# The shared client-policy cases (clients/policy/cases.json) run against one scripted server.
"$BIN/python" clients/policy/scripted_server.py --env-file "$data/policy.env" >"$data/policy.log" 2>&1 &
policy=$!
trap 'kill "$policy" 2>/dev/null || true; wait "$policy" 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 150); do
  [ -f "$data/policy.env" ] && break
  kill -0 "$policy" 2>/dev/null || { cat "$data/policy.log" >&2; exit 1; }
  sleep 0.2
done
set -a
# shellcheck source=/dev/null
. "$data/policy.env"
set +a
echo "scripted policy server on $KEYTURN_POLICY_ADDRESS"

failed=()
skipped=()
suite() {  # suite NAME TOOL COMMAND...
  local name=$1 tool=$2
  shift 2
  if ! command -v "$tool" >/dev/null; then
    if [ -n "${KEYTURN_REQUIRE_ALL:-}" ]; then
      echo "== $name: FAILED ($tool is not installed)" >&2
      failed+=("$name")
    else
      echo "== $name: skipped ($tool is not installed)"
      skipped+=("$name")
    fi
    return 0
  fi
  echo
  echo "== $name"
  local started=$SECONDS
  if "$@"; then
    echo "== $name: ok ($((SECONDS - started)) s)"
  else
    echo "== $name: FAILED" >&2
    failed+=("$name")
  fi
}

[ -x clients/node/run-tests.sh ] && suite node npm clients/node/run-tests.sh
[ -x clients/go/run-tests.sh ] && suite go go clients/go/run-tests.sh
[ -x clients/java/run-tests.sh ] && suite java mvn clients/java/run-tests.sh
[ -x examples/python/run.sh ] && suite python-example python3 examples/python/run.sh
# The walkthrough uses tools/bin/grpcurl or one on PATH, else builds it with go.
grpcurl_tool=go
{ [ -x tools/bin/grpcurl ] || command -v grpcurl >/dev/null; } && grpcurl_tool=bash
[ -x scripts/grpcurl-walkthrough.sh ] && suite grpcurl "$grpcurl_tool" scripts/grpcurl-walkthrough.sh "$KEYTURN_ADDRESS" "$KEYTURN_TOKEN"
[ -x scripts/curl-walkthrough.sh ] && suite curl curl scripts/curl-walkthrough.sh "http://127.0.0.1:$http_port" "$KEYTURN_TOKEN"

echo
if [ ${#skipped[@]} -gt 0 ]; then echo "skipped: ${skipped[*]}"; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "clients: all suites passed"
