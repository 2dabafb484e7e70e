#!/usr/bin/env bash
# CI stage: every artifact built as it would be published, into dist/, and checked:
#   the version     one number from VERSION everywhere (scripts/version.py check)
#   python          keyturn-server and keyturn wheels and sdists; twine check; contents;
#                   both wheels installed into a fresh environment and run
#   npm             npm pack of @keyturn/client: built JS and types, no tests, no sources
#   maven           keyturn-client jar and sources jar (mvn package)
#   go              the module built from outside the repository through its module path
# A toolchain that is missing skips its part (named at the end) unless KEYTURN_REQUIRE_ALL.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=$root/.venv/bin
dist=$root/dist
version=$(cat VERSION)
work=$(mktemp -d "${TMPDIR:-/tmp}/keyturn-artifacts.XXXXXX")
trap 'rm -rf "$work"' EXIT
rm -rf "$dist"
mkdir -p "$dist"

failed=()
skipped=()
part() {  # part NAME TOOL FUNCTION
  local name=$1 tool=$2 started=$EPOCHREALTIME
  if ! command -v "$tool" >/dev/null; then
    if [ -n "${KEYTURN_REQUIRE_ALL:-}" ]; then
      echo "== $name: FAILED ($tool is not installed)" >&2
      failed+=("$name")
    else
      echo "== $name: skipped ($tool is not installed)"
      skipped+=("$name")
    fi
    return 0
  fi
  echo "== $name"
  if "$3"; then
    echo "== $name: ok ($(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s)"
  else
    echo "== $name: FAILED" >&2
    failed+=("$name")
  fi
}

versions() { "$BIN/python" scripts/version.py check; }

python_dists() {
  "$BIN/python" -m build --quiet --outdir "$dist/python" . >"$work/build.log" 2>&1 &&
    "$BIN/python" -m build --quiet --outdir "$dist/python" clients/python >>"$work/build.log" 2>&1 ||
    { cat "$work/build.log" >&2; return 1; }
  "$BIN/twine" check --strict "$dist"/python/* | sed 's/\x1b\[[0-9;]*m//g'
  "$BIN/python" - "$dist/python" "$version" <<'EOF'
import sys, tarfile, zipfile
from email.parser import Parser
from pathlib import Path

dist, version = Path(sys.argv[1]), sys.argv[2]
def wheel(name):
    [path] = dist.glob(f"{name}-{version}-py3-none-any.whl")
    archive = zipfile.ZipFile(path)
    [meta] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    return set(archive.namelist()), Parser().parsestr(archive.read(meta).decode())

server, meta = wheel("keyturn_server")
assert meta["Version"] == version, meta["Version"]
assert f"keyturn=={version}" in meta.get_all("Requires-Dist"), "the server must require its client"
for needed in ("keyturn_server/py.typed", "keyturn_server/store/migrations/0001_initial.sql",
               "keyturn_server/probe.py", "keyturn_server/api/__init__.py"):
    assert needed in server, f"server wheel lacks {needed}"
assert not [n for n in server if n.startswith("keyturn/")], "the client ships in its own wheel"

client, meta = wheel("keyturn")
assert meta["Version"] == version
for needed in ("keyturn/py.typed", "keyturn/v1/keys_pb2.py", "keyturn/v1/keys_pb2.pyi"):
    assert needed in client, f"client wheel lacks {needed}"
assert not [n for n in client if n.startswith("keyturn_server/")]

for sdist in dist.glob("*.tar.gz"):
    names = tarfile.open(sdist).getnames()
    assert not [n for n in names if "/tests/" in n], f"{sdist.name} ships tests"
print(f"wheels: keyturn-server {len(server)} files, keyturn {len(client)} files; sdists without tests")
EOF
  # Installed from the wheels alone into a fresh environment (third-party packages are
  # borrowed from .venv, so no index is needed): the entry points and imports work.
  "$BIN/python" -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --no-deps --no-index "$dist"/python/*.whl
  "$BIN/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    >"$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-dependencies.pth"
  (cd "$work" && "$work/venv/bin/keyturn" --version &&
    "$work/venv/bin/python" -c 'import keyturn, keyturn_server.app, sys; assert sys.prefix in keyturn.__file__ and sys.prefix in keyturn_server.app.__file__; print("imports from the installed wheels")')
  ls "$dist/python"
}

npm_package() {
  (
    cd clients/node
    [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error >/dev/null
    mkdir -p "$dist/npm"
    npm pack --json --pack-destination "$dist/npm" --loglevel=error >"$work/npm-pack.json"
  )
  "$BIN/python" - "$work/npm-pack.json" "$version" clients/node/src <<'EOF'
import json, sys
from pathlib import Path

[pack] = json.load(open(sys.argv[1]))
version, sources = sys.argv[2], Path(sys.argv[3])
files = {f["path"] for f in pack["files"]}
assert pack["name"] == "@keyturn/client" and pack["version"] == version, (pack["name"], pack["version"])
for source in sources.rglob("*.ts"):
    stem = "dist/src/" + str(source.relative_to(sources))[: -len(".ts")]
    for built in (stem + ".js", stem + ".d.ts"):
        assert built in files, f"{built} is not in the package"
stray = [f for f in files if f.startswith(("test/", "dist/test/", "src/")) or f.endswith((".ts.map", ".js.map"))
         or (f.endswith(".ts") and not f.endswith(".d.ts"))]
assert not stray, f"tests or sources in the package: {stray[:5]}"
assert "package.json" in files and "README.md" in files
manifest = json.loads(Path("clients/node/package.json").read_text())
assert not manifest.get("private"), "a private package cannot be published"
print(f"{pack['filename']}: {len(files)} files, {pack['size']} bytes; built JS and types, no tests")
EOF
}

maven_artifacts() {
  local repo=${KEYTURN_M2_REPOSITORY:-$HOME/.m2/repository} target=clients/java/target
  mvn -q -B -Dmaven.repo.local="$repo" -DskipTests -f clients/java/pom.xml package 2>&1 |
    sed -u $'s/\e\\[0m//g'
  mkdir -p "$dist/maven"
  cp "$target/keyturn-client-$version.jar" "$target/keyturn-client-$version-sources.jar" "$dist/maven/"
  "$BIN/python" - "$dist/maven" "$version" <<'EOF'
import sys, zipfile
from pathlib import Path

dist, version = Path(sys.argv[1]), sys.argv[2]
classes = zipfile.ZipFile(dist / f"keyturn-client-{version}.jar").namelist()
sources = zipfile.ZipFile(dist / f"keyturn-client-{version}-sources.jar").namelist()
assert any(n.startswith("dev/keyturn/client/") and n.endswith(".class") for n in classes)
assert any(n.endswith("KeyServiceGrpc.class") for n in classes), "generated stubs missing"
assert any(n.startswith("dev/keyturn/client/") and n.endswith(".java") for n in sources)
assert any(n.endswith("KeyServiceGrpc.java") for n in sources), "generated sources missing"
assert not [n for n in classes + sources if "Test" in n.rsplit("/", 1)[-1]], "tests in the jars"
print(f"keyturn-client-{version}.jar: {len(classes)} entries; sources jar: {len(sources)} entries")
EOF
}

go_module() {
  local module mod_go
  module=$(sed -n 's/^module //p' clients/go/go.mod)
  mod_go=$(sed -n 's/^go //p' clients/go/go.mod)
  mkdir -p "$work/go-consumer"
  cat >"$work/go-consumer/go.mod" <<EOF
module example.com/keyturn-consumer

go $mod_go

require $module v$version

// Stands in for the published tag $module@v$version (tag: clients/go/v$version).
replace $module => $root/clients/go
EOF
  cat >"$work/go-consumer/main.go" <<EOF
package main

import (
	"fmt"

	keyturnv1 "$module/gen/keyturn/v1"
	"$module/keyturn"
)

func main() {
	client, err := keyturn.NewClient("127.0.0.1:1") // no I/O until the first call
	if err != nil {
		panic(err)
	}
	defer client.Close()
	fmt.Println("imported", "$module", "and built", (&keyturnv1.ListKeysRequest{}).ProtoReflect().Descriptor().FullName())
}
EOF
  (cd "$work/go-consumer" && go mod tidy >/dev/null 2>&1 && go build -o consumer . && ./consumer) ||
    { (cd "$work/go-consumer" && go mod tidy && go build .) >&2; return 1; }
}

part version python3 versions
part python python3 python_dists
part npm npm npm_package
part maven mvn maven_artifacts
part go go go_module

echo
if [ ${#skipped[@]} -gt 0 ]; then echo "skipped: ${skipped[*]}"; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "artifacts in dist/: $(cd "$dist" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
