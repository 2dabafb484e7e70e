#!/usr/bin/env bash
# Builds the Java client (Maven generates the keyturn.v1 stubs from proto/), runs its tests
# against KEYTURN_ADDRESS (host:port, plaintext) with KEYTURN_TOKEN (admin) and against the
# scripted policy server (clients/policy: started here unless KEYTURN_POLICY_ADDRESS names
# one), installs it into the local Maven repository, then runs examples/java against the
# live server.
# Needs only a JDK 17+ and Maven 3.8+; everything else comes from the Maven repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

: "${KEYTURN_ADDRESS:?set KEYTURN_ADDRESS to host:port of a running Keyturn server}"
: "${KEYTURN_TOKEN:?set KEYTURN_TOKEN to an admin bearer token of that server}"
export KEYTURN_ADDRESS KEYTURN_TOKEN
# The shared policy cases need the scripted server: run this script under one.
[ -n "${KEYTURN_POLICY_ADDRESS:-}" ] || exec "$root/clients/policy/with-scripted-server.sh" "$0" "$@"

# The local repository is $KEYTURN_M2_REPOSITORY, by default Maven's usual ~/.m2/repository:
# the first run downloads the pinned plugins, protoc, protoc-gen-grpc-java and the gRPC
# runtime (about 70 MB); later runs reuse them and need no network. The sed drops the stray
# colour resets (ESC[0m) that Debian's Maven 3.8 writes even in batch mode.
mvn() {
  command mvn -q -B -Dmaven.repo.local="${KEYTURN_M2_REPOSITORY:-$HOME/.m2/repository}" "$@" 2>&1 | sed -u $'s/\e\\[0m//g'
}

# Surefire is silent under -q when all is well: print its counts ourselves.
summary() {
  local tests=0 failed=0 skipped=0 report suite
  attr() { sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p" <<<"$suite"; }
  for report in "$here"/target/surefire-reports/TEST-*.xml; do
    [ -e "$report" ] || continue
    suite=$(grep -m1 -o '<testsuite [^>]*>' "$report")
    tests=$((tests + $(attr tests)))
    failed=$((failed + $(attr failures) + $(attr errors)))
    skipped=$((skipped + $(attr skipped)))
  done
  echo "java: $((tests - failed - skipped)) passed, $failed failed, $skipped skipped"
}

rm -rf "$here/target/surefire-reports"
if ! mvn -f "$here/pom.xml" install; then
  summary
  exit 1
fi
summary

echo "java example:"
mvn -f "$root/examples/java/pom.xml" compile exec:java
