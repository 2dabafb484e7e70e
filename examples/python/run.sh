#!/usr/bin/env bash
# Runs the Python usage example against the server at KEYTURN_ADDRESS (host:port) with
# KEYTURN_TOKEN; exits non-zero when it fails. Uses the repository's .venv (make setup),
# or $PYTHON with the keyturn package installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
: "${KEYTURN_ADDRESS:?set KEYTURN_ADDRESS (host:port)}"
: "${KEYTURN_TOKEN:?set KEYTURN_TOKEN (an admin or service token)}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" "$root/examples/python/key_manager.py"
