#!/usr/bin/env bash
# Regenerates the committed Python stubs (package keyturn.v1) from proto/. The google.api
# and google.rpc imports resolve to googleapis-common-protos at run time.
# grpcio-tools is pinned exactly in pyproject.toml ([dev]) so that the output is
# byte-for-byte reproducible; CI regenerates and fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
out=clients/python
rm -f "$out"/keyturn/v1/*_pb2*.py "$out"/keyturn/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc \
  -I proto \
  -I third_party/googleapis \
  --python_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$(command -v "$PY")")/protoc-gen-mypy" \
  --mypy_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$(command -v "$PY")")/protoc-gen-mypy_grpc" \
  --mypy_grpc_out="$out" \
  proto/keyturn/v1/*.proto
