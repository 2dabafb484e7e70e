#!/usr/bin/env bash
# `make tools`: the command-line tools the README and bench/ use, in ./tools/bin (gitignored):
#   grpcurl  the tour in the README and docs/grpcurl.md     (built with `go install`)
#   ghz      the load generator of bench/                   (built with `go install`)
#   buf      lint, breaking-change check, generation        (the binary `make setup` pins)
# Versions are the ones the scripts that use them pin, so there is one pin per tool.
# Usage: scripts/tools.sh [grpcurl|ghz|buf]...   (default: all three)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/tools/bin"
mkdir -p "$bin"
GRPCURL_VERSION=$(sed -n 's/^GRPCURL_VERSION=//p' "$root/scripts/grpcurl-walkthrough.sh")
GHZ_VERSION=$(sed -n 's/^GHZ_VERSION = "\(.*\)"$/\1/p' "$root/bench/ghz.py")

go_install() {  # go_install NAME MODULE VERSION
  local name=$1 module=$2 version=$3
  if [ -x "$bin/$name" ] && go version -m "$bin/$name" 2>/dev/null | grep -q "$version"; then
    echo "$name $version: already in tools/bin"
    return
  fi
  if ! command -v go >/dev/null; then
    echo "$name needs Go to build it (https://go.dev/dl/), or put a $name on PATH" >&2
    return 1
  fi
  echo "$name $version: building with go install (a minute or two the first time) ..."
  GOBIN="$bin" go install "$module@$version"
  echo "$name $version: installed in tools/bin"
}

buf_copy() {
  local pinned="$root/.venv/bin/buf"
  if [ ! -x "$pinned" ]; then
    echo "buf comes with the dev dependencies: run 'make setup' first" >&2
    return 1
  fi
  cp "$pinned" "$bin/buf"
  echo "buf $("$bin/buf" --version): installed in tools/bin"
}

for tool in "${@:-grpcurl ghz buf}"; do
  for name in $tool; do
    case $name in
      grpcurl) go_install grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION" ;;
      ghz) go_install ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION" ;;
      buf) buf_copy ;;
      *) echo "unknown tool $name (grpcurl, ghz, buf)" >&2; exit 2 ;;
    esac
  done
done
echo
echo "add them to your PATH:  export PATH=\"$bin:\$PATH\""
