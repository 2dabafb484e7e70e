"""A flood of connections that never finish a request must not take the rest of the
server with it: each listener holds at most its share of the open files limit, and
connections that stay silent are closed (server/keyturn_server/connection_budget.py).

The server runs with 1,024 open files (soft and hard), the default of many hosts and
containers; the flood comes from this process, whose own limit is higher."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import admin_pb2
from tests.harness import Client
from tests.pki import Authority
from tests.process import ServerProcess, free_port

pytestmark = pytest.mark.slow
OPEN_FILES = 1024
FLOOD = 1100
#: The HTTP listener's idle timeout in these tests (default 30 s).
IDLE_S = 3


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data", "--http-idle-timeout", f"{IDLE_S}s")
    process.http_port = free_port()
    process.extra += ["--http-listen", f"127.0.0.1:{process.http_port}"]
    process.open_files = OPEN_FILES
    await process.start()
    try:
        yield process
    finally:
        if process.process is not None:
            process.terminate()


def _flood(port: int, first_bytes: bytes = b"") -> list[socket.socket]:
    sockets = []
    for _ in range(FLOOD):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            sock.sendall(first_bytes)
        sockets.append(sock)
    return sockets


def _http_get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def _closed_by_server(sockets: list[socket.socket]) -> int:
    closed = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            if sock.recv(1024) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


async def _health(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        client = Client(channel, server.token())
        await client.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=5)


async def test_silent_grpc_connections_leave_http_served_and_are_closed(
    server: ServerProcess,
) -> None:
    """1,100 connections to the gRPC port that never send the HTTP/2 preface: the HTTP
    listener still answers, and grpc closes them once their handshake times out."""
    http_port = server.http_port
    assert http_port is not None
    flood = await asyncio.to_thread(_flood, server.port)
    try:
        assert await asyncio.to_thread(_http_get, http_port, "/openapi.json") == 200
        started = time.monotonic()
        while await asyncio.to_thread(_closed_by_server, flood) < FLOOD:
            assert time.monotonic() - started < 30, "silent gRPC connections stayed open"
            await asyncio.sleep(1)
        await _health(server)
    finally:
        for sock in flood:
            sock.close()


async def test_half_sent_http_requests_leave_grpc_served_and_are_closed(
    server: ServerProcess,
) -> None:
    """1,100 connections to the HTTP port that send the start of a request and stop (a
    slowloris): gRPC still answers, the HTTP listener refuses what is past its share, and
    closes the rest once they have had no request in progress for the idle timeout."""
    http_port = server.http_port
    assert http_port is not None
    flood = await asyncio.to_thread(_flood, http_port, b"GET /v1/keys HTTP/1.1\r\nHost: x\r\n")
    try:
        await _health(server)
        started = time.monotonic()
        while await asyncio.to_thread(_closed_by_server, flood) < FLOOD:
            assert time.monotonic() - started < IDLE_S + 10, "half-sent requests stayed open"
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_http_get, http_port, "/openapi.json") == 200
    finally:
        for sock in flood:
            sock.close()


async def test_an_http_connection_that_keeps_asking_is_not_cut(server: ServerProcess) -> None:
    """The idle timeout counts from the last answer: a client that keeps using its
    keep-alive connection keeps it."""
    http_port = server.http_port
    assert http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    try:
        local_ports = set()
        for _ in range(2 * IDLE_S + 1):  # 7 s of use, with a 3 s idle timeout
            connection.request("GET", "/openapi.json")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert connection.sock is not None
            local_ports.add(connection.sock.getsockname()[1])
            await asyncio.sleep(1)
        assert len(local_ports) == 1  # http.client opens a new connection after a close
    finally:
        connection.close()


def _half_body(path: str, token: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
        'Content-Length: 1000\r\n\r\n{"token": "'
    ).encode()


@pytest.mark.parametrize("route", ["v1", "compat"])
async def test_http_bodies_that_never_end_are_closed(server: ServerProcess, route: str) -> None:
    """1,100 connections that send a request's headers and the start of its body, then
    stop (a slow POST): a request in progress is not idle, so before, they held the HTTP
    listener's whole share for good (on /v1, where a body is read before its caller is
    known, with no token at all). A body now has the idle timeout to arrive."""
    http_port = server.http_port
    assert http_port is not None
    start = (
        _half_body("/v1/handles:validate")
        if route == "v1"
        else _half_body("/api/key-management/handles/validate", server.token())
    )
    flood = await asyncio.to_thread(_flood, http_port, start)
    try:
        started = time.monotonic()
        while await asyncio.to_thread(_closed_by_server, flood) < FLOOD:
            assert time.monotonic() - started < IDLE_S + 10, "half-sent bodies stayed open"
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_http_get, http_port, "/openapi.json") == 200
    finally:
        for sock in flood:
            sock.close()


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, Authority]]:
    authority = Authority()
    authority.write(tmp_path / "tls")
    process = ServerProcess(
        tmp_path / "data", "--tls-dir", str(tmp_path / "tls"), "--http-idle-timeout", f"{IDLE_S}s"
    )
    process.http_port = free_port()
    process.extra += ["--http-listen", f"127.0.0.1:{process.http_port}"]
    process.open_files = OPEN_FILES
    process.spawn()
    await process.wait_listening(30)
    try:
        yield process, authority
    finally:
        if process.process is not None:
            process.terminate()


async def test_tls_connections_that_never_handshake_leave_grpc_served_and_are_closed(
    tls_server: tuple[ServerProcess, Authority],
) -> None:
    """1,100 connections to the HTTPS port that never begin their TLS handshake. aiohttp
    hears of a TLS connection only once its handshake is done, so they were not counted
    against the listener's share, and asyncio waits 60 s for a handshake: they took every
    file descriptor, and the gRPC listener answered nothing. Now the listening socket
    counts them and a handshake has 10 s, as on the gRPC listener."""
    server, authority = tls_server
    http_port = server.http_port
    assert http_port is not None
    flood = await asyncio.to_thread(_flood, http_port)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=authority.pem)
        async with grpc.aio.secure_channel(server.address, credentials) as channel:
            client = Client(channel, server.token())
            await client.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=5)
        started = time.monotonic()
        while await asyncio.to_thread(_closed_by_server, flood) < FLOOD:
            assert time.monotonic() - started < 25, "connections without a handshake stayed open"
            await asyncio.sleep(1)
    finally:
        for sock in flood:
            sock.close()
