#!/usr/bin/env bash
# Tests the Go client against the live server named by KEYTURN_ADDRESS (host:port,
# plaintext) and KEYTURN_TOKEN (admin token), and against the scripted policy server
# (clients/policy: started here unless KEYTURN_POLICY_ADDRESS names one), then runs
# examples/go against the live server.
# Needs only the Go toolchain: modules go to the usual module cache (go env GOMODCACHE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
example="$root/examples/go"

: "${KEYTURN_ADDRESS:?set KEYTURN_ADDRESS to host:port of a live server}"
: "${KEYTURN_TOKEN:?set KEYTURN_TOKEN to an admin token}"
# The shared policy cases need the scripted server: run this script under one.
[ -n "${KEYTURN_POLICY_ADDRESS:-}" ] || exec "$root/clients/policy/with-scripted-server.sh" "$0" "$@"
command -v go >/dev/null || { echo "run-tests.sh: the Go toolchain (go) is required" >&2; exit 1; }

export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"  # the user's module cache: warm after the first run
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export GOTOOLCHAIN=local
# The restart test starts its own server; by default the repository's .venv one.
if [ -z "${KEYTURN_BIN:-}${KEYTURN_SERVER_CMD:-}" ] && [ -x "$root/.venv/bin/keyturn" ]; then
  export KEYTURN_BIN="$root/.venv/bin/keyturn"
fi
step() { printf '\n== go: %s\n' "$*"; }

step "modules ($(go version | awk '{print $3}'))"
(cd "$here" && go mod download)
(cd "$example" && go mod download)

step "gofmt, go mod tidy, go vet"
unformatted=$(gofmt -l "$here/keyturn" "$here/gen" "$example")
if [ -n "$unformatted" ]; then
  echo "not gofmt-clean:" >&2
  echo "$unformatted" >&2
  exit 1
fi
(cd "$here" && go mod tidy -diff && go vet ./...)
(cd "$example" && go mod tidy -diff && go vet ./...)

step "go test against $KEYTURN_ADDRESS and the scripted policy server"
(cd "$here" && go test -count=1 -timeout 5m ./...)

step "examples/go against $KEYTURN_ADDRESS"
(cd "$example" && go run .)
