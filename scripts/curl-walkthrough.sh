#!/usr/bin/env bash
# The curl calls of docs/curl.md against a Keyturn server's HTTP/JSON listener, each one
# checked: the script fails on the first wrong answer. tests/test_curl_walkthrough.py
# keeps this script, docs/curl.md and the README's tour in step.
#
# Usage: scripts/curl-walkthrough.sh URL TOKEN
#   URL    the HTTP listener, e.g. http://127.0.0.1:8080;  TOKEN  an admin token.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage="usage: $0 URL TOKEN"
URL=${1:?$usage}
TOKEN=${2:?$usage}
PY="$root/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 1; }

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

step "the OpenAPI document (no token)"
answer=$(curl -sS --fail-with-body "$URL/openapi.json")
expect '"openapi": "3.0.3"'
expect '"/v1/handles:validate"'

step "health, per component"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/health")
expect '"status":"SERVING_STATUS_SERVING"'
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/health/keys")
expect '"name":"keys"'

step "generate, get and list keys"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"type": "encryption", "metadata": {"purpose": "data-encryption"}, "userId": "user123"}' \
  "$URL/v1/keys")
KEY_ID=$(field key.id)
[[ $KEY_ID == key_* ]] || fail "no key id in: $answer"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/keys/$KEY_ID")
expect '"status":"KEY_STATUS_ACTIVE"'
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  "$URL/v1/keys?type=encryption&status=KEY_STATUS_ACTIVE&pageSize=5")
expect '"type":"encryption"'
expect '"totalSize":"'

step "encrypt and decrypt with the key (the material never leaves the server)"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"plaintext": "Y2FyZCA0MTEx", "associatedData": "b3JkZXItNw=="}' \
  "$URL/v1/keys/$KEY_ID:encrypt")
CIPHERTEXT=$(field ciphertext)
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d "{\"ciphertext\": \"$CIPHERTEXT\", \"associatedData\": \"b3JkZXItNw==\"}" \
  "$URL/v1/keys/$KEY_ID:decrypt")
expect '"plaintext":"Y2FyZCA0MTEx"'

step "generate a workflow handle and validate its token"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"type": "workflow", "context": {"workflow": "data-processing"}, "userId": "user123"}' \
  "$URL/v1/handles")
HANDLE_ID=$(field handle.id)
HANDLE_TOKEN=$(field token)
[[ $HANDLE_ID == hdl_* && -n $HANDLE_TOKEN ]] || fail "no handle in: $answer"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d "{\"token\": \"$HANDLE_TOKEN\", \"context\": {\"ip\": \"192.168.1.100\"}}" \
  "$URL/v1/handles:validate")
expect '"valid":true'
expect "\"handleId\":\"$HANDLE_ID\""

step "statistics"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/keys:statistics")
expect '"encryption":{'
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/handles:statistics")
expect '"validationsSucceeded":"'

step "configuration: read it, then change one policy with its etag"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/config")
ETAG=$(field etag)
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -X PATCH \
  -H 'Content-Type: application/json' -d '{"securityPolicies": {"rateLimitPerHandle": 200}}' \
  "$URL/v1/config?updateMask=securityPolicies.rateLimitPerHandle&etag=$ETAG")
expect '"rateLimitPerHandle":200'

step "audit log"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  "$URL/v1/auditEvents?action=key.generate&descending=true&pageSize=3")
expect "\"resourceId\":\"$KEY_ID\""
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/v1/auditEvents:verify")
expect '"valid":true'

step "watch key events as Server-Sent Events for a few seconds"
# --max-time ends the stream on purpose: curl then exits with 28.
status=0
answer=$(curl -sS -N --max-time 3 -H "Authorization: Bearer $TOKEN" \
  "$URL/v1/keys:watchExpiring?kinds=EVENT_KIND_CREATED&resumeAfter=0" 2>&1) || status=$?
[ "$status" -eq 28 ] || fail "the watch ended with exit $status, not at --max-time: $answer"
expect 'id: '
expect '"kind":"EVENT_KIND_CREATED"'
expect "\"id\":\"$KEY_ID\""

step "an error carries its reason (ErrorInfo) and HTTP status"
answer=$(curl -sS -w '\nHTTP %{http_code}' -H "Authorization: Bearer $TOKEN" \
  "$URL/v1/keys/key_aaaaaaaaaaaaaaaa")
expect 'HTTP 404'
expect '"status":"NOT_FOUND"'
expect '"reason":"KEY_NOT_FOUND"'

step "the specification's REST API: a handle's id is its token"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"type": "workflow", "context": {"environment": "production"}, "userId": "user123"}' \
  "$URL/api/key-management/handles/generate")
expect '"success":true'
SPEC_HANDLE=$(field handle.id)
[[ $SPEC_HANDLE == kt_workflow_* ]] || fail "the handle id is not its token: $answer"
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d "{\"handleId\": \"$SPEC_HANDLE\", \"context\": {\"ip\": \"192.168.1.100\", \"userAgent\": \"MyApp/1.0\"}, \"userId\": \"user123\"}" \
  "$URL/api/key-management/handles/validate")
expect '"valid":true'
answer=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL/api/key-management/health")
expect '"status":"serving"'

echo
echo "curl walkthrough: all calls answered as expected"
