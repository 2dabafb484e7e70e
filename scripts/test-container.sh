#!/usr/bin/env bash
# CI stage: build the container image with podman and smoke-test it the way it runs in
# production: non-root, read-only root filesystem, no capabilities, TLS from a mounted
# certificate, the data on a volume, the port published on loopback only.
#
# Installs podman, runc and mmdebstrap from Debian's packages when missing (root only);
# where that is impossible the stage is skipped (exit 77) unless KEYTURN_REQUIRE_ALL is set.
# The base image is made from Debian's packages (scripts/container-base.sh) once and kept
# in podman's storage; KEYTURN_CONTAINER_BASE=python:3.11-slim uses a registry instead.
#
# Sandbox settings (written to a private containers.conf, used through CONTAINERS_CONF so
# nothing on the host changes): runc (crun refuses hybrid cgroup hierarchies), cgroupfs (no
# systemd), ulimits no higher than this process's hard limits (podman's defaults for root
# exceed them and runc then fails), a file event log. The build uses the host network
# and, when the host has one, its CA bundle for pip (TLS-intercepting proxies).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BIN=$root/.venv/bin
SKIPPED=77
stage_started=$EPOCHREALTIME
grace=15

say() { printf 'container: %s\n' "$*"; }
fail() { printf 'container: FAILED: %s\n' "$*" >&2; exit 1; }
timings=()
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%6.1f s", b - a }'; }
timed() {  # timed LABEL COMMAND...: run it, record how long it took
  local label=$1 started=$EPOCHREALTIME
  shift
  "$@"
  timings+=("$(printf '%-44s %s' "$label" "$(since "$started")")")
}

# --- podman --------------------------------------------------------------------------
tools_missing() {
  local tool
  for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || return 0; done
  return 1
}
install_tools() {
  if ! tools_missing; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    if [ -n "${KEYTURN_REQUIRE_ALL:-}" ]; then
      fail "podman is not installed and cannot be installed here (needs root and apt-get)"
    fi
    say "skipped: podman is not installed and cannot be installed here (needs root and apt-get)"
    exit "$SKIPPED"
  fi
  say "installing podman, runc and mmdebstrap (Debian packages)"
  local packages=(podman runc mmdebstrap)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${packages[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${packages[@]}" >/dev/null
  }
}
timed "podman, runc, mmdebstrap present" install_tools

work=$(mktemp -d "${TMPDIR:-/tmp}/keyturn-container.XXXXXX")
name=keyturn-smoke-$$
volume=keyturn-smoke-$$
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
# runc cannot set RLIMIT_NPROC above pid_max here either.
[ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$work/containers.conf

# podman's own complaints that periodic health checks need systemd are noise here: the
# smoke test runs the check by hand (`podman healthcheck run`).
quiet() { grep -v 'unable to get systemd connection' || true; }

# --- base image and build ---------------------------------------------------------------
base=${KEYTURN_CONTAINER_BASE:-}
make_base() {
  if [ -n "$base" ]; then
    say "base image $base (KEYTURN_CONTAINER_BASE)"
    return 0
  fi
  # Named by the recipe's hash: a changed recipe makes a new base, an unchanged one is reused.
  base=localhost/keyturn-base:bookworm-$(sha256sum scripts/container-base.sh | cut -c1-12)
  if podman image exists "$base"; then
    say "base image $base (cached)"
  else
    say "making the base image $base from Debian's packages"
    scripts/container-base.sh "$base" | sed 's/^/container: /'
  fi
}
timed "base image" make_base

version=$(cat VERSION)
image=localhost/keyturn:$version
build() {
  local extra=()
  if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    extra=(--volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.pem:ro
      --build-arg PIP_CERT=/run/host-ca.pem)
  fi
  if ! podman build --format docker --network host --build-arg "BASE=$base" \
    --build-arg "VERSION=$version" "${extra[@]}" --tag "$image" . >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    fail "podman build"
  fi
  podman image prune -f >/dev/null 2>&1 || true  # the previous build's layers
  say "built $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
}
timed "image build" build

# --- smoke test --------------------------------------------------------------------------
tls=$work/tls
"$BIN/python" -m tests.pki "$tls"
if [ "$(id -u)" = 0 ]; then
  chown -R 10001:10001 "$tls" && chmod 0400 "$tls/tls.key"  # as a secret mount would be
else
  chmod 0644 "$tls/tls.key"
fi
# Passed by name (--env MASTER_KEY), so the key never appears on a command line.
MASTER_KEY=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')
export MASTER_KEY
# Confined exactly as docker-compose.yml says: read-only root, a small /tmp, no
# capabilities, no privilege gain.
mapfile -t hardened < <("$BIN/python" -m tests.container_smoke hardening)
[ ${#hardened[@]} -ge 4 ] || fail "docker-compose.yml lost its confinement: ${hardened[*]}"
say "confinement from docker-compose.yml: ${hardened[*]}"

refuses() {  # refuses WHAT EXPECTED-LINE PODMAN-RUN-ARGS...
  local what=$1 expected=$2 output rc=0
  shift 2
  output=$(podman run --rm "${hardened[@]}" "$@" "$image" 2>&1) || rc=$?
  output=$(quiet <<<"$output")
  [ "$rc" != 0 ] || fail "$what: it started (exit 0)"
  grep -qF "$expected" <<<"$output" || fail "$what: expected '$expected', got: $output"
  ! grep -q Traceback <<<"$output" || fail "$what: a traceback: $output"
  say "$what: refused (exit $rc): $(head -c 120 <<<"$output")..."
}
refusals() {
  refuses "no MASTER_KEY" "MASTER_KEY is required in production" -v "$tls:/tls:ro"
  refuses "no certificate mounted" "mount a directory holding tls.crt and tls.key at /tls" \
    --env MASTER_KEY
}
timed "refusals (no MASTER_KEY, no certificate)" refusals

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http_port=$(free_port)
start() {
  podman run --detach --name "$name" "${hardened[@]}" --volume "$volume:/data" \
    --volume "$tls:/tls:ro" --env MASTER_KEY \
    --publish "127.0.0.1:$port:50051" --publish "127.0.0.1:$http_port:8080" "$image" \
    2>&1 >/dev/null | quiet
}
healthy() {  # waits until the image's HEALTHCHECK passes
  local _
  for _ in $(seq 60); do
    if podman healthcheck run "$name" >/dev/null 2>&1; then return 0; fi
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] ||
      { podman logs "$name" >&2; fail "the container exited"; }
    sleep 0.5
  done
  podman logs "$name" >&2
  fail "not healthy within 30 s"
}
timed "start until healthy (HEALTHCHECK over TLS)" eval 'start; healthy'
say "healthy: $name on 127.0.0.1:$port (published on loopback only)"

confinement() {
  local facts
  facts=$(podman exec "$name" sh -c 'id -u; grep CapEff /proc/1/status; touch /usr/local/x 2>&1 || true' 2>&1 | quiet)
  grep -qx 10001 <<<"$facts" || fail "not running as uid 10001: $facts"
  grep -q 'CapEff:.*0000000000000000' <<<"$facts" || fail "capabilities left: $facts"
  grep -q 'Read-only file system' <<<"$facts" || fail "the root filesystem is writable: $facts"
  say "uid 10001, no capabilities, read-only root filesystem"
}
timed "confinement" confinement

export KEYTURN_TOKEN
KEYTURN_TOKEN=$(podman exec "$name" cat /data/admin.token 2>/dev/null)
use() {
  say "$("$BIN/python" -m tests.container_smoke seed "127.0.0.1:$port" "$tls/ca.crt" "$work/state.json")"
  local key listed
  key=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["key_id"])' "$work/state.json")
  # Inside: the operator command, authenticated by the admin token it finds in /data.
  listed=$(podman exec "$name" keyturn keys list --address localhost:50051 --ca /tls/ca.crt 2>&1 | quiet)
  grep -q "$key" <<<"$listed" || fail "keyturn keys list inside the container: $listed"
  say "keyturn keys list inside the container lists $key"
  say "$("$BIN/python" -m tests.container_smoke https "127.0.0.1:$http_port" "$tls/ca.crt" "$work/state.json")"
}
timed "host clients over TLS (gRPC, HTTPS), keyturn inside" use

restart() {
  podman restart --time "$grace" "$name" 2>&1 >/dev/null | quiet
  healthy
  say "$("$BIN/python" -m tests.container_smoke check "127.0.0.1:$port" "$tls/ca.crt" "$work/state.json")"
}
timed "restart, data on the volume survives" restart

stop() {
  local started=$SECONDS began=$EPOCHREALTIME code
  podman stop --time "$grace" "$name" 2>&1 >/dev/null | quiet
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || fail "podman stop: the server exited with $code (killed after the grace period?)"
  [ $((SECONDS - started)) -lt "$grace" ] || fail "podman stop took the whole grace period"
  say "stopped with exit code 0 in$(since "$began") (grace $grace s)"
}
timed "podman stop (SIGTERM, drain, exit 0)" stop

echo
echo "container stage timings:"
printf '  %s\n' "${timings[@]}"
printf '  %-44s %s\n' "total" "$(since "$stage_started")"
echo "image $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
