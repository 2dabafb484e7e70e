#!/usr/bin/env bash
# Installs (npm ci), builds and tests the Node client against the live server given by
# KEYTURN_ADDRESS (host:port, plaintext) and KEYTURN_TOKEN (admin token) and against the
# scripted policy server (clients/policy: started here unless KEYTURN_POLICY_ADDRESS names
# one), then runs the example in examples/node. Without KEYTURN_ADDRESS it starts a
# throwaway server first.
# The watch-restart test always runs its own server (KEYTURN_SERVER_CMD, or .venv's keyturn).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
npm_ci() { npm ci --no-audit --no-fund --loglevel=error >/dev/null; }
# The shared policy cases need the scripted server: run this script under one.
[ -n "${KEYTURN_POLICY_ADDRESS:-}" ] || exec "$root/clients/policy/with-scripted-server.sh" "$0" "$@"

step() { printf '\n== node: %s\n' "$*"; }

step "install and build the client"
cd "$here"
npm_ci
npm run --silent build

if [ -z "${KEYTURN_ADDRESS:-}" ]; then
  step "no KEYTURN_ADDRESS: starting a throwaway server"
  keyturn="$root/.venv/bin/keyturn"
  [ -x "$keyturn" ] || keyturn="$(command -v keyturn || true)"
  [ -n "$keyturn" ] || { echo "no keyturn server found: run 'make setup' or set KEYTURN_ADDRESS" >&2; exit 1; }
  data="$(mktemp -d "${TMPDIR:-/tmp}/keyturn-node-run.XXXXXX")"
  port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
  MASTER_KEY="$(node -e 'console.log(require("crypto").randomBytes(32).toString("hex"))')" \
    "$keyturn" serve --data-dir "$data" --listen "127.0.0.1:$port" --caller-rate-limit 0 >"$data/server.log" 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; rm -rf "$data"' EXIT
  for _ in $(seq 150); do
    grep -q "listening on" "$data/server.log" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$data/server.log" >&2; exit 1; }
    sleep 0.2
  done
  export KEYTURN_ADDRESS="127.0.0.1:$port"
  KEYTURN_TOKEN="$(cat "$data/admin.token")"
  export KEYTURN_TOKEN
fi
: "${KEYTURN_TOKEN:?set KEYTURN_TOKEN to the admin token of the server}"

step "tests against $KEYTURN_ADDRESS and the scripted policy server"
node --test --test-concurrency=1 dist/test/*.test.js

step "example (examples/node)"
cd "$root/examples/node"
npm_ci
npm run --silent build
node dist/keymanager.js
