"""Malformed HTTP that the parser refuses before any route runs: an oversized header that
starts with a bearer token, chunked framing broken by the body's own bytes, an overlong
URL, too many headers. aiohttp's own answer quoted the bytes it choked on, to the caller
and, as a plain-text traceback, into the log; each is now the listener's JSON error,
without those bytes, and one JSON access line naming the error type."""

from __future__ import annotations

import json
import socket
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
