#!/usr/bin/env bash
# The grpcurl calls an operator makes against a Keyturn server, each one checked: the
# script fails on the first wrong answer. docs/grpcurl.md shows exactly these calls
# (tests/client/test_grpcurl_walkthrough.py keeps the two in step).
#
# Usage: scripts/grpcurl-walkthrough.sh ADDRESS TOKEN
#        scripts/grpcurl-walkthrough.sh --install   (only build grpcurl into tools/bin)
#   ADDRESS  HOST:PORT of a plaintext server; TOKEN  an admin token.
# grpcurl is taken from tools/bin, else built there with `go install` at a pinned
# version, else taken from PATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage="usage: $0 ADDRESS TOKEN"
GRPCURL_VERSION=v1.9.3
if [ "${1:-}" = "--install" ]; then
  if [ ! -x "$root/tools/bin/grpcurl" ]; then
    echo "installing grpcurl $GRPCURL_VERSION into tools/bin"
    GOBIN="$root/tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  fi
  exit 0
fi
ADDRESS=${1:?$usage}
TOKEN=${2:?$usage}
PY="$root/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"

GRPCURL="$root/tools/bin/grpcurl"
if [ ! -x "$GRPCURL" ]; then
  if command -v go >/dev/null; then
    echo "installing grpcurl $GRPCURL_VERSION into tools/bin"
    GOBIN="$root/tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  elif command -v grpcurl >/dev/null; then
    GRPCURL="$(command -v grpcurl)"
  else
    echo "grpcurl is missing and go is not installed to build it" >&2
    exit 1
  fi
fi
grpcurl() { "$GRPCURL" "$@"; }

step() { printf '\n== %s\n' "$*"; }
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
# expect TEXT: the last answer contains TEXT.
expect() { grep -qF -- "$1" <<<"$answer" || fail "expected '$1' in: $answer"; }
# field PATH: a value of the last answer (JSON), e.g. field key.id
field() {
  "$PY" -c 'import json,sys
value = json.loads(sys.stdin.read())
for part in sys.argv[1].split("."):
    value = value[part]
print(value)' "$1" <<<"$answer"
}

step "services, by reflection (no token)"
answer=$(grpcurl -plaintext "$ADDRESS" list)
for service in keyturn.v1.KeyService keyturn.v1.HandleService keyturn.v1.AdminService \
  grpc.health.v1.Health; do
  expect "$service"
done

step "describe a service and a message"
answer=$(grpcurl -plaintext "$ADDRESS" describe keyturn.v1.KeyService)
expect "rpc GenerateKey ( .keyturn.v1.GenerateKeyRequest )"
answer=$(grpcurl -plaintext "$ADDRESS" describe keyturn.v1.GenerateKeyRequest)
expect "map<string, string> metadata = 2;"

step "standard health checking (no token)"
answer=$(grpcurl -plaintext "$ADDRESS" grpc.health.v1.Health/Check)
expect '"status": "SERVING"'
answer=$(grpcurl -plaintext -d '{"service": "keyturn.v1.HandleService"}' "$ADDRESS" grpc.health.v1.Health/Check)
expect '"status": "SERVING"'

step "Keyturn health, per component"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" "$ADDRESS" keyturn.v1.AdminService/GetHealth)
expect '"status": "SERVING_STATUS_SERVING"'
expect '"name": "scheduler"'

step "generate, get and list keys"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"type": "encryption", "metadata": {"purpose": "data-encryption"}, "userId": "user123"}' \
  "$ADDRESS" keyturn.v1.KeyService/GenerateKey)
KEY_ID=$(field key.id)
[[ $KEY_ID == key_* ]] || fail "no key id in: $answer"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d "{\"keyId\": \"$KEY_ID\"}" "$ADDRESS" keyturn.v1.KeyService/GetKey)
expect '"status": "KEY_STATUS_ACTIVE"'
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"type": "encryption", "status": "KEY_STATUS_ACTIVE", "pageSize": 5}' "$ADDRESS" keyturn.v1.KeyService/ListKeys)
expect '"type": "encryption"'
expect '"total_size": "'

step "encrypt and decrypt with the key (the material never leaves the server)"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d "{\"keyId\": \"$KEY_ID\", \"plaintext\": \"Y2FyZCA0MTEx\", \"associatedData\": \"b3JkZXItNw==\"}" \
  "$ADDRESS" keyturn.v1.KeyService/Encrypt)
CIPHERTEXT=$(field ciphertext)
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d "{\"keyId\": \"$KEY_ID\", \"ciphertext\": \"$CIPHERTEXT\", \"associatedData\": \"b3JkZXItNw==\"}" \
  "$ADDRESS" keyturn.v1.KeyService/Decrypt)
expect '"plaintext": "Y2FyZCA0MTEx"'

step "generate a workflow handle and validate its token"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"type": "workflow", "context": {"workflow": "data-processing", "ip": "192.168.1.100"}, "userId": "user123"}' \
  "$ADDRESS" keyturn.v1.HandleService/GenerateHandle)
HANDLE_ID=$(field handle.id)
HANDLE_TOKEN=$(field token)
[[ $HANDLE_ID == hdl_* && -n $HANDLE_TOKEN ]] || fail "no handle in: $answer"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d "{\"token\": \"$HANDLE_TOKEN\", \"context\": {\"ip\": \"192.168.1.100\", \"user_agent\": \"MyApp/1.0\"}}" \
  "$ADDRESS" keyturn.v1.HandleService/ValidateHandle)
expect '"valid": true'
expect "\"handle_id\": \"$HANDLE_ID\""

step "statistics"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" "$ADDRESS" keyturn.v1.KeyService/GetKeyStatistics)
expect '"encryption": {'
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" "$ADDRESS" keyturn.v1.HandleService/GetHandleStatistics)
expect '"validations_succeeded":'

step "configuration and audit log"
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" "$ADDRESS" keyturn.v1.AdminService/GetConfig)
expect '"etag": "'
expect '"workflow": {'
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"action": "key.generate", "descending": true, "pageSize": 3}' "$ADDRESS" keyturn.v1.AdminService/ListAuditEvents)
expect "\"resource_id\": \"$KEY_ID\""
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" "$ADDRESS" keyturn.v1.AdminService/VerifyAuditLog)
expect '"valid": true'

step "watch the key events for a few seconds (replayed from the start of the log)"
# -max-time ends the stream on purpose: grpcurl then reports DeadlineExceeded (exit 68).
status=0
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" -max-time 3 \
  -d '{"kinds": ["EVENT_KIND_CREATED"], "resumeAfter": "0"}' \
  "$ADDRESS" keyturn.v1.KeyService/WatchExpiring 2>&1) || status=$?
[ "$status" -eq 68 ] || fail "the watch ended with exit $status, not at -max-time: $answer"
expect '"kind": "EVENT_KIND_CREATED"'
expect "\"id\": \"$KEY_ID\""

step "an error carries its reason (ErrorInfo) in the status details"
status=0
answer=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
  -d '{"keyId": "key_aaaaaaaaaaaaaaaa"}' "$ADDRESS" keyturn.v1.KeyService/GetKey 2>&1) || status=$?
[ "$status" -ne 0 ] || fail "GetKey of a missing key succeeded"
expect "Code: NotFound"
expect '"reason": "KEY_NOT_FOUND"'

echo
echo "grpcurl walkthrough: all calls answered as expected"
