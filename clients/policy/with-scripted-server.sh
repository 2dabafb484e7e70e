#!/usr/bin/env bash
# Runs COMMAND... with KEYTURN_POLICY_* naming a scripted policy server
# (clients/policy/scripted_server.py): the one the environment already names (as
# scripts/test-clients.sh sets it), or one started here for the command's lifetime.
# Needs the repository's .venv (make setup), or PYTHON pointing at an interpreter with
# grpcio, cryptography and the keyturn package.
set -euo pipefail
if [ -n "${KEYTURN_POLICY_ADDRESS:-}" ]; then
  exec "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
dir=$(mktemp -d "${TMPDIR:-/tmp}/keyturn-policy-run.XXXXXX")
"$python" "$here/scripted_server.py" --env-file "$dir/env" >"$dir/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 300); do
  [ -f "$dir/env" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
  sleep 0.1
done
[ -f "$dir/env" ] || { echo "the scripted policy server did not start within 30 s" >&2; exit 1; }
set -a
# shellcheck source=/dev/null
. "$dir/env"
set +a
"$@"
