"""JSON responses of the HTTP listener: a message, or a google.rpc.Status as an error."""

from __future__ import annotations

from aiohttp import web
from google.rpc import status_pb2

from keyturn_server.api.http import codec
from keyturn_server.api.http.jsonmap import error_document, http_status, reason_of, retry_after

JSON = "application/json"
#: aiohttp would otherwise announce itself and its exact version (and Python's) to anyone.
SERVER = {"Server": "keyturn"}


#: Answers carry secrets (tokens, revealed and exported material) and what their caller
#: may see: no browser or proxy may keep one (Vault sends the same on every answer).
NO_STORE = {"Cache-Control": "no-store"}

#: Built once: aiohttp copies them into each response, and parsing a content_type
#: argument on every answer cost more than the copy.
_JSON_HEADERS = {**SERVER, **NO_STORE, "Content-Type": JSON}


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers=_JSON_HEADERS)


def error_response(status: status_pb2.Status, http: int | None = None) -> web.Response:
    """The AIP-193 error body, with Retry-After when the status carries a RetryInfo.
    ``http``: an HTTP status more precise than the code's (405); the body says it too."""
    http = http or http_status(status)
    response = challenged(json_response(codec.dumps(error_document(status, http)), http), status)
    delay = retry_after(status)
    if delay is not None:
        response.headers["Retry-After"] = str(max(1, round(delay.total_seconds() + 0.5)))
    return response


#: RFC 6750's error codes of a Bearer challenge, by the ErrorInfo reason of the refusal;
#: none when no credentials were sent (section 3.1), invalid_token otherwise.
_CHALLENGE_ERRORS = {"MISSING_CREDENTIALS": "", "MALFORMED_AUTHORIZATION": "invalid_request"}


def challenged(response: web.Response, status: status_pb2.Status) -> web.Response:
    """``response`` with the WWW-Authenticate header that RFC 9110 requires of a 401: a
    Bearer challenge (RFC 6750), which a 401 used to come without."""
    if response.status != 401:
        return response
    error = _CHALLENGE_ERRORS.get(reason_of(status), "invalid_token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="keyturn"' + (
        f', error="{error}"' if error else ""
    )
    return response


def status_response(code: int, message: str, http: int | None = None) -> web.Response:
    return error_response(status_pb2.Status(code=code, message=message), http)


# A path may hold a handle token (the specification's routes take one in place of an id),
# and a mistyped one still does: the refusals of a path name no part of it.


def no_route(verb: str) -> str:
    return f"no route for {verb} at this path; the routes are listed at /openapi.json"


def not_allowed(verb: str) -> str:
    return f"{verb} is not allowed on this path; the Allow header lists the verbs it takes"
