#!/usr/bin/env bash
# Regenerates every committed stub from proto/: Python here, and each client's own
# generator when its toolchain is present. Generated code is never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Python generator chatters ("Writing mypy to ..."): show its output only on failure.
if ! out=$(PYTHON=${PYTHON:-python} scripts/generate_python.sh 2>&1); then
  echo "$out" >&2
  exit 1
fi
# The OpenAPI document is generated from the Python stubs just written.
"${PYTHON:-python}" scripts/openapi.py
for generator in clients/*/generate.sh; do
  [ -x "$generator" ] && "$generator"
done
true
