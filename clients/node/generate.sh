#!/usr/bin/env bash
# Regenerates src/gen/ (committed) from proto/ and the vendored google/rpc protos:
# installs the pinned protoc-gen-es from package-lock.json (npm ci), then runs buf from
# the repository root with this directory's template. Same inputs, same output.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if ! command -v npm >/dev/null 2>&1; then
  echo "clients/node/generate.sh: npm not found, skipping the TypeScript stubs" >&2
  [ -z "${KEYTURN_REQUIRE_ALL:-}" ] || exit 1  # CI: every toolchain must be there
  exit 0
fi
buf="${BUF:-$root/.venv/bin/buf}"
if [ ! -x "$buf" ]; then
  buf="$(command -v buf || true)"
  [ -n "$buf" ] || { echo "clients/node/generate.sh: buf not found (make setup installs it)" >&2; exit 1; }
fi

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cd "$root"
PATH="$here/node_modules/.bin:$PATH" "$buf" generate --template clients/node/buf.gen.yaml
