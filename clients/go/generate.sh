#!/usr/bin/env bash
# Regenerates gen/keyturn/v1 from proto/ with pinned plugins, deterministically.
# The plugins are built with `go install` into clients/go/.bin (gitignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# Keep these in step with google.golang.org/protobuf and google.golang.org/grpc in go.mod.
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

if ! command -v go >/dev/null 2>&1; then
  echo "clients/go/generate.sh: go not found, skipping the Go stubs" >&2
  [ -z "${KEYTURN_REQUIRE_ALL:-}" ] || exit 1  # CI: every toolchain must be there
  exit 0
fi

export GOBIN="$here/.bin"
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"  # the user's module cache: warm after the first run
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export GOTOOLCHAIN=local

installed_version() { "$GOBIN/$1" --version 2>/dev/null | awk '{print $NF}'; }

if [ "$(installed_version protoc-gen-go)" != "$PROTOC_GEN_GO_VERSION" ]; then
  go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
# protoc-gen-go-grpc prints its version without the leading "v".
if [ "v$(installed_version protoc-gen-go-grpc)" != "$PROTOC_GEN_GO_GRPC_VERSION" ]; then
  go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

BUF=${BUF:-}
if [ -z "$BUF" ]; then
  if [ -x "$root/.venv/bin/buf" ]; then BUF="$root/.venv/bin/buf"; else BUF=buf; fi
fi

cd "$root"
"$BUF" generate --template clients/go/buf.gen.yaml
