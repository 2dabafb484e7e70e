"""Malformed HTTP that the parser refuses before any route runs: an oversized header that
starts with a bearer token, chunked framing broken by the body's own bytes, an overlong
URL, too many headers. aiohttp's own answer quoted the bytes it choked on, to the caller
and, as a plain-text traceback, into the log; each is now the listener's JSON error,
without those bytes, and one JSON access line naming the error type.

Bodies that pass the parser but not the reading of them (nested past the JSON parsers'
depth, or not decoding as their Content-Encoding declares) are the error of their route
family: a google.rpc.Status on /v1, the specification's envelope under
/api/key-management; 401 first without a token; no traceback in the log."""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import ServerProcess

#: Stands for what a caller sends in a body (a plaintext to encrypt, a handle token).
BODY_SECRET = "plaintext-that-must-stay-secret-7f3a9c"


def serve(data_dir: Path) -> ServerProcess:
    process = ServerProcess(data_dir)
    process.env["LOG_LEVEL"] = "info"
    process.start_http()
    return process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = serve(tmp_path_factory.mktemp("malformed") / "data")
    yield process
    process.terminate()


def send(server: ServerProcess, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """``raw`` on a fresh connection; the status, headers and body of the answer, read
    until the server closes the connection (a timeout if it kept it open)."""
    assert server.http_port is not None
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def requests_(token: str) -> dict[str, bytes]:
    padding = "x" * 9000
    return {
        "an oversized Authorization header": (
            f"GET /v1/keys HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {token} {padding}\r\n\r\n"
        ).encode(),
        "a body that breaks its chunked framing": (
            "POST /v1/keys/key_aaaaaaaaaaaaaaaa:encrypt HTTP/1.1\r\nHost: k\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{BODY_SECRET}{'a' * 200}\r\n0\r\n\r\n"
        ).encode(),
        "an overlong URL": (
            f"GET /v1/keys/{BODY_SECRET}{'a' * 9000} HTTP/1.1\r\nHost: k\r\n\r\n"
        ).encode(),
        "too many headers": (
            "GET /v1/keys HTTP/1.1\r\nHost: k\r\n"
            + "".join(f"X-{n}: {BODY_SECRET}\r\n" for n in range(200))
            + "\r\n"
        ).encode(),
    }


CASES = list(requests_("t"))


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_request_gets_a_json_error_without_its_bytes(
    server: ServerProcess, case: str
) -> None:
    token = server.token()
    status, headers, body = send(server, requests_(token)[case])
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    (info,) = [d for d in error["details"] if d["@type"].endswith("ErrorInfo")]
    assert info["reason"] == "MALFORMED_HTTP_REQUEST" and info["domain"] == "keyturn.dev"
    assert token not in body.decode() and token[:16] not in body.decode()
    assert BODY_SECRET not in body.decode()


def test_the_log_holds_json_lines_naming_the_error_and_no_bytes_of_the_requests(
    tmp_path: Path,
) -> None:
    server = serve(tmp_path / "data")
    token = server.token()
    for raw in requests_(token).values():
        send(server, raw)
    server.terminate()  # the writer thread writes what is queued
    text = server.log.read_text()
    assert token[:16] not in text and BODY_SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    refused = [line for line in lines if line.get("msg") == "bad HTTP request"]
    assert {line["error"] for line in refused} >= {"LineTooLong", "BadHttpMessage"}
    assert all(line["category"] == "access" and line["http_status"] == 400 for line in refused)
    assert not [line for line in lines if line["level"] == "error"]


# --- bodies the parser passes and the reading refuses ---------------------------------

V1, COMPAT = "/v1", "/api/key-management"
ROUTES = [
    f"{V1}/keys",
    f"{V1}/handles:validate",
    f"{COMPAT}/keys/generate",
    f"{COMPAT}/handles/validate",
]
#: Nested past every parser's depth, around a 19-digit number: the number sends the
#: document to json (exact integers), which gave up with a RecursionError (a 500).
DEEP = b"[" * 3000 + b"1234567890123456789" + b"]" * 3000


def post(path: str, body: bytes, token: str | None, headers: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: k\r\n{auth}Content-Type: application/json\r\n"
        f"{headers}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def refusal(path: str, status: int, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The route family's error, as {"code", "reason", "fields"}; the answer is the
    listener's own (JSON, and aiohttp neither named nor answering)."""
    assert headers["content-type"] == "application/json", body
    assert headers["server"] == "keyturn"
    document = json.loads(body)
    if path.startswith(COMPAT):
        assert document["success"] is False
        fields = {v["field"] for v in document.get("fieldViolations", [])}
        return {"code": document["code"], "reason": document.get("reason", ""), "fields": fields}
    error = document["error"]
    assert error["code"] == status
    details = {d["@type"].rpartition(".")[2]: d for d in error.get("details", [])}
    violations = details.get("BadRequest", {}).get("fieldViolations", [])
    return {
        "code": error["status"],
        "reason": details["ErrorInfo"]["reason"],
        "fields": {v["field"] for v in violations},
        "message": error["message"],
    }


#: Bodies that cannot be read, as (extra headers, body, the ErrorInfo reason).
UNREADABLE: dict[str, tuple[str, bytes, str]] = {
    "nested past the depth limit": ("", DEEP, "INVALID_ARGUMENT"),
    # aiohttp decodes while the body is read: its error escaped the reading (a 500).
    "gzip that does not decode": ("Content-Encoding: gzip\r\n", b"abcde", "MALFORMED_BODY"),
    "deflate that does not decode": ("Content-Encoding: deflate\r\n", b"abcde", "MALFORMED_BODY"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize("path", ROUTES)
def test_an_unreadable_body_is_invalid_argument_in_the_routes_error_shape(
    server: ServerProcess, path: str, case: str
) -> None:
    extra, raw, reason = UNREADABLE[case]
    status, headers, body = send(server, post(path, raw, server.token(), extra))
    assert status == 400, body
    error = refusal(path, status, headers, body)
    assert error["code"] == "INVALID_ARGUMENT" and error["reason"] == reason
    assert "body" in error["fields"]


def test_a_body_nested_too_deep_says_so(server: ServerProcess) -> None:
    status, _, body = send(server, post(f"{V1}/keys", DEEP, server.token()))
    assert status == 400 and b"depth limit exceeded" in body


@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize("path", ROUTES)
def test_without_a_token_an_unreadable_body_is_401_first(
    server: ServerProcess, path: str, case: str
) -> None:
    extra, raw, _ = UNREADABLE[case]
    status, headers, body = send(server, post(path, raw, None, extra))
    assert status == 401, body
    assert refusal(path, status, headers, body)["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("path", [f"{V1}/keys", f"{COMPAT}/keys/generate"])
def test_a_compressed_body_that_decodes_is_read(
    server: ServerProcess, path: str, encoding: str
) -> None:
    plain = b'{"type": "api"}'
    raw = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    status, _, body = send(
        server, post(path, raw, server.token(), f"Content-Encoding: {encoding}\r\n")
    )
    assert status in (200, 201), body
    assert json.loads(body)["key"]["type"] == "api"


def test_unreadable_bodies_leave_no_error_in_the_log(tmp_path: Path) -> None:
    server = serve(tmp_path / "data")
    token = server.token()
    for extra, raw, _ in UNREADABLE.values():
        for path in ROUTES:
            send(server, post(path, raw, token, extra))
    server.terminate()  # the writer thread writes what is queued
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert not [line for line in lines if line["level"] == "error"]
