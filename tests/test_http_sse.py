"""WatchExpiring over HTTP as Server-Sent Events: ids are sequences, Last-Event-ID and
resumeAfter resume exactly, heartbeats are comments, refusals are HTTP errors before the
stream, and shutdown ends streams cleanly with the point to resume from."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from keyturn.v1 import admin_pb2, keys_pb2
from keyturn_server.api.http import sse
from tests.harness import SECRETS, Harness
from tests.http_support import HttpClient

WATCH = "/v1/handles:watchExpiring"


@dataclass
class Message:
    """One SSE message as an EventSource would see it, plus the comments before it."""

    id: str | None = None
    event: str = "message"
    data: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)


async def messages(response: aiohttp.ClientResponse) -> AsyncIterator[Message]:
    """The SSE framing of text/event-stream (WHATWG HTML, server-sent events)."""
    current = Message()
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            yield current
            current = Message()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data = f"{current.data}\n{value}" if current.data else value


async def take(
    response: aiohttp.ClientResponse, count: int, data_only: bool = True
) -> list[Message]:
    found: list[Message] = []
    async with asyncio.timeout(10):
        async for message in messages(response):
            if message.data or not data_only:
                found.append(message)
            if len(found) == count:
                return found
    return found


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


def bearer(server: Harness) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


async def generate(server: Harness, count: int) -> list[str]:
    client = HttpClient(server.http_url, server.admin_token)
    ids = []
    for _ in range(count):
        answer = await client.post("/v1/handles", {"type": "session"})
        assert answer.status == 200, answer.text
        ids.append(answer.body["handle"]["id"])
    return ids


async def test_events_carry_their_sequence_as_id(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        server.http_url + WATCH, params={"resumeAfter": "0"}, headers=bearer(server)
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"  # it may carry rotated tokens
        ids = await generate(server, 2)
        got = await take(response, 2)
    assert [m.json["kind"] for m in got] == ["EVENT_KIND_CREATED"] * 2
    assert [m.json["handle"]["id"] for m in got] == ids
    assert [m.id for m in got] == [m.json["sequence"] for m in got]
    assert [m.event for m in got] == ["message", "message"]


async def test_last_event_id_resumes_exactly_once_in_order(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await generate(server, 4)
    async with session.get(
        server.http_url + WATCH, params={"resumeAfter": "0"}, headers=bearer(server)
    ) as response:
        first = await take(response, 2)
    last = first[-1].id
    assert last is not None
    # A reconnecting EventSource repeats its URL (resumeAfter=0) and adds Last-Event-ID,
    # which wins.
    async with session.get(
        server.http_url + WATCH,
        params={"resumeAfter": "0"},
        headers={**bearer(server), "Last-Event-ID": last},
    ) as response:
        rest = await take(response, 2)
    sequences = [int(m.id or 0) for m in first + rest]
    assert sequences == sorted(set(sequences)) and len(sequences) == 4


async def test_without_a_resume_point_the_snapshot_ends_with_the_live_start(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await generate(server, 1)
    server.clock.advance(timedelta(minutes=55))  # session handles warn 10 min before 1 h
    async with session.get(server.http_url + WATCH, headers=bearer(server)) as response:
        snapshot, complete = await take(response, 2)
    assert snapshot.json["kind"] == "EVENT_KIND_EXPIRING" and snapshot.json["snapshot"]
    assert snapshot.id is None
    assert complete.json["kind"] == "EVENT_KIND_SNAPSHOT_COMPLETE"
    # 1, or 2 when the scheduler has already logged the EXPIRING event of the moved clock.
    assert complete.id == complete.json["latestSequence"] and int(complete.id) >= 1
    # How often heartbeats come (the default 30 s): a silent stream is a stuck server.
    assert complete.json["heartbeatInterval"] == "30s"


async def test_heartbeats_are_comments_that_move_the_resume_point(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await server.restart(heartbeat_interval=timedelta(seconds=0.2))
    await generate(server, 1)
    async with session.get(
        server.http_url + "/v1/keys:watchExpiring",
        params={"resumeAfter": "1"},
        headers=bearer(server),
    ) as response:
        (beat,) = await take(response, 1, data_only=False)
    # A resumed stream has no SNAPSHOT_COMPLETE: the heartbeat says how often it comes.
    assert beat.data == "" and beat.comments == ["heartbeat, latest sequence 1, every 0.200s"]
    assert beat.id == "1"


async def test_a_stale_resume_point_is_an_http_error_before_the_stream(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        server.http_url + WATCH, params={"resumeAfter": "50"}, headers=bearer(server)
    ) as response:
        assert response.status == 400
        assert response.headers["Content-Type"] == "application/json"
        error = (await response.json())["error"]
    assert error["status"] == "OUT_OF_RANGE"
    assert error["details"][0]["reason"] == "RESUME_POINT_AHEAD"


INT64_MAX = 2**63 - 1


@pytest.mark.parametrize("route", [WATCH, "/v1/keys:watchExpiring"])
@pytest.mark.parametrize(
    "last",
    [str(INT64_MAX + 1), "9" * 20, "9" * 5000, "²", "-1"],
    ids=["2^63", "20 digits", "5000 digits", "superscript two", "negative"],
)
async def test_a_last_event_id_that_is_no_sequence_is_invalid_argument(
    server: Harness, session: aiohttp.ClientSession, route: str, last: str
) -> None:
    """Past int64 protobuf refused it with a ValueError, and "²" passed isdigit() to
    int(): a text/plain 500 from aiohttp, with or without a token."""
    for headers, status in (
        ({**bearer(server), "Last-Event-ID": last}, 400),
        ({"Last-Event-ID": last}, 401),
    ):
        async with session.get(server.http_url + route, headers=headers) as response:
            assert response.status == status
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["Server"] == "keyturn"
            error = (await response.json())["error"]
        if status == 400:
            assert error["status"] == "INVALID_ARGUMENT"
            (violations,) = [d for d in error["details"] if d["@type"].endswith("BadRequest")]
            assert violations["fieldViolations"][0]["field"] == "Last-Event-ID"


@pytest.mark.parametrize(
    ("resume", "status"),
    [(str(INT64_MAX), "OUT_OF_RANGE"), (str(INT64_MAX + 1), "INVALID_ARGUMENT")],
)
async def test_a_resume_point_at_the_edge_of_int64(
    server: Harness, session: aiohttp.ClientSession, resume: str, status: str
) -> None:
    """Within int64 and ahead of the log is OUT_OF_RANGE; past int64 is no sequence at
    all, from the header or the query."""
    for asked in ({"headers": {"Last-Event-ID": resume}}, {"params": {"resumeAfter": resume}}):
        headers = {**bearer(server), **asked.get("headers", {})}
        params = asked.get("params", {})
        async with session.get(server.http_url + WATCH, headers=headers, params=params) as response:
            assert response.status == 400
            assert (await response.json())["error"]["status"] == status


async def test_shutdown_ends_the_stream_with_where_to_resume(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await generate(server, 1)
    async with session.get(
        server.http_url + WATCH, params={"resumeAfter": "1"}, headers=bearer(server)
    ) as response:
        stopping = asyncio.create_task(server.stop())
        (end,) = await take(response, 1)
        rest = await asyncio.wait_for(response.content.read(), 5)  # then a clean EOF
        await stopping
    assert end.event == "error" and rest == b""
    error = end.json["error"]
    assert error["status"] == "UNAVAILABLE" and error["code"] == 503
    assert error["details"][0]["metadata"] == {"resume_after": "1"}


async def test_a_revoked_callers_event_stream_ends_with_an_error_event(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await server.restart(heartbeat_interval=timedelta(seconds=0.2))  # an idle stream
    watcher = await server.client_for("auditor", "watcher")
    async with session.get(
        server.http_url + WATCH,
        params={"resumeAfter": "0"},
        headers={"Authorization": f"Bearer {watcher.token}"},
    ) as response:
        assert response.status == 200
        await server.admin.admin.RevokeAccessToken(
            admin_pb2.RevokeAccessTokenRequest(name="watcher")
        )
        (end,) = await take(response, 1)
    assert end.event == "error"
    error = end.json["error"]
    assert error["status"] == "UNAUTHENTICATED" and error["code"] == 401
    assert error["details"][0]["reason"] == "CREDENTIALS_REVOKED"


async def test_a_thiefs_idle_event_stream_ends_at_once_when_its_token_is_revoked(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await server.restart(heartbeat_interval=timedelta(seconds=30))  # the default
    thief = await server.client_for("service", "thief")
    async with session.get(
        server.http_url + WATCH,
        params={"resumeAfter": "0"},
        headers={"Authorization": f"Bearer {thief.token}"},
    ) as response:
        assert response.status == 200
        await server.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="thief"))
        (end,) = await asyncio.wait_for(take(response, 1), 5)  # not at the next heartbeat
    assert end.event == "error"
    assert end.json["error"]["details"][0]["reason"] == "CREDENTIALS_REVOKED"


async def test_a_subscriber_that_stops_reading_loses_its_connection_not_the_server(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, its handler waited to write for ever: the connection and megabytes of
    socket buffers stayed, and every stop of the server overran its grace period."""
    monkeypatch.setattr(sse, "WRITE_STALL_SECONDS", 0.5)
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    request = "GET /v1/keys:watchExpiring?resumeAfter=0 HTTP/1.1\r\nHost: x\r\n"
    sock.sendall(f"{request}Authorization: Bearer {server.admin_token}\r\n\r\n".encode())
    metadata = {f"k{i}": "x" * 250 for i in range(32)}  # about 9 KB per event
    loop = asyncio.get_running_loop()
    try:
        for _ in range(400):  # more than the socket buffers hold: the writes stall
            await server.admin.keys.GenerateKey(
                keys_pb2.GenerateKeyRequest(type="session", metadata=metadata)
            )
        await asyncio.sleep(1.5)  # the stall outlasts its limit; nothing was read yet

        async def read_to_the_end() -> None:
            while await loop.sock_recv(sock, 65536):
                pass

        with contextlib.suppress(ConnectionResetError):
            await asyncio.wait_for(read_to_the_end(), 10)
    finally:
        sock.close()
    stopping = loop.time()
    await server.stop()
    assert loop.time() - stopping < 5


async def test_an_event_source_may_send_its_token_in_the_query(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    query = {"access_token": server.admin_token, "resumeAfter": "0"}
    async with session.get(server.http_url + WATCH, params=query) as response:
        assert response.status == 200
        await generate(server, 1)
        assert len(await take(response, 1)) == 1
    # Only there: everywhere else a token in a URL is not taken as credentials.
    async with session.get(
        server.http_url + "/v1/keys", params={"access_token": server.admin_token}
    ) as response:
        assert response.status == 401


async def test_a_subscriber_that_goes_away_is_unsubscribed(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    assert server.app is not None and server.app.services is not None
    hub = server.app.services.hub
    async with session.get(
        server.http_url + WATCH, params={"resumeAfter": "0"}, headers=bearer(server)
    ) as response:
        assert response.status == 200
        assert len(hub) == 1
    for _ in range(250):  # the server notices the closed connection within a moment
        if not len(hub):
            break
        await asyncio.sleep(0.02)
    assert len(hub) == 0


async def test_tokens_are_delivered_to_the_owner_only_on_request(
    server: Harness, session: aiohttp.ClientSession
) -> None:
    await generate(server, 1)
    await server.advance(timedelta(hours=1))  # the automatic rotation
    async with session.get(
        server.http_url + WATCH,
        params={"resumeAfter": "0", "deliverTokens": "true", "kinds": "EVENT_KIND_ROTATED"},
        headers=bearer(server),
    ) as response:
        (rotated,) = await take(response, 1)
    assert rotated.json["kind"] == "EVENT_KIND_ROTATED"
    assert rotated.json["token"].startswith("kt_session_")
    SECRETS.add(rotated.json["token"])
