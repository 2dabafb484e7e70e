"""The access log at INFO (the production default): a line for every call that matters on
its own (refused, failed, or changing something), one summary line per caller and method
for the successful hot reads; at DEBUG a line for every call."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.observability.access import AccessLog
from keyturn_server.observability.logs import JsonFormatter
from tests.harness import Harness, fails

R = handles_pb2


class Lines(logging.Handler):
    """The access log's lines as parsed JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def of(self, method: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["method"].endswith("/" + method)]


@pytest.fixture
def access_lines() -> Iterator[Lines]:
    """Lines of the keyturn.access logger, with Keyturn logging at INFO."""
    lines = Lines()
    access = logging.getLogger("keyturn.access")
    root = logging.getLogger("keyturn")
    level = root.level
    root.setLevel(logging.INFO)
    access.addHandler(lines)
    try:
        yield lines
    finally:
        access.removeHandler(lines)
        root.setLevel(level)


async def _issue(server: Harness) -> str:
    issued = await server.admin.handles.GenerateHandle(R.GenerateHandleRequest(type="session"))
    return str(issued.token)


async def test_successful_validations_are_summarised_per_caller(
    server: Harness, access_lines: Lines
) -> None:
    token = await _issue(server)
    for _ in range(5):
        reply = await server.admin.handles.ValidateHandle(R.ValidateHandleRequest(token=token))
        assert reply.validation.valid
    assert access_lines.of("ValidateHandle") == []  # nothing per call
    assert server.app is not None
    await server.app.flush_access_log()
    [summary] = access_lines.of("ValidateHandle")
    assert summary["msg"] == "rpc summary"
    assert summary["category"] == "access"
    assert summary["code"] == "OK"
    assert summary["calls"] == 5
    assert summary["principal"] == "admin"
    assert summary["peer"]
    assert 0 < summary["ms_mean"] <= summary["ms_max"]
    assert summary["window_seconds"] >= 0
    assert token not in json.dumps(access_lines.lines)


async def test_a_refused_validation_gets_its_own_line(server: Harness, access_lines: Lines) -> None:
    token = await _issue(server)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    reply = await server.admin.handles.ValidateHandle(R.ValidateHandleRequest(token=forged))
    assert not reply.validation.valid
    [line] = access_lines.of("ValidateHandle")
    assert line["msg"] == "rpc"
    assert line["code"] == "OK"
    assert line["refused"] == "MALFORMED"
    assert forged not in json.dumps(line)


async def test_failed_calls_and_changes_get_a_line_each(
    server: Harness, access_lines: Lines
) -> None:
    await _issue(server)
    await _issue(server)
    assert [line["code"] for line in access_lines.of("GenerateHandle")] == ["OK", "OK"]
    failure = await fails(server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id="key_nope")))
    assert failure.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    [line] = access_lines.of("GetKey")
    assert line["msg"] == "rpc" and line["code"] == failure.code.name
    stranger = server.client("kt_api-access_notarealtoken000")
    await fails(stranger.admin.GetHealth(admin_pb2.GetHealthRequest()))
    [denied] = access_lines.of("GetHealth")
    assert denied["code"] == "UNAUTHENTICATED"


async def test_at_debug_every_call_gets_a_line(server: Harness, access_lines: Lines) -> None:
    logging.getLogger("keyturn").setLevel(logging.DEBUG)
    token = await _issue(server)
    for _ in range(3):
        await server.admin.handles.ValidateHandle(R.ValidateHandleRequest(token=token))
    assert [line["msg"] for line in access_lines.of("ValidateHandle")] == ["rpc"] * 3


@pytest.mark.parametrize(
    "code", ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"]
)
def test_calls_failing_alike_through_an_outage_are_summarised_not_one_line_each(
    access_lines: Lines, code: str
) -> None:
    log = AccessLog(interval=3600)
    for _ in range(500):  # a full disk under a steady load: every change refused
        log.record("/keyturn.v1.KeyService/GenerateKey", code, 0.002, "svc", "10.0.0.7")
    log.record("/keyturn.v1.KeyService/GenerateKey", "UNAUTHENTICATED", 0.001, "", "10.0.0.9")
    [denied] = access_lines.of("GenerateKey")  # what a caller was refused: still alone
    assert denied["msg"] == "rpc" and denied["code"] == "UNAUTHENTICATED"
    log.flush()
    [summary] = access_lines.of("GenerateKey")[1:]
    assert summary["msg"] == "rpc summary" and summary["code"] == code
    assert summary["calls"] == 500 and summary["principal"] == "svc"


def test_many_callers_do_not_grow_the_window_without_bound(access_lines: Lines) -> None:
    log = AccessLog(interval=3600)
    for n in range(25_000):
        log.record("/keyturn.v1.KeyService/GetKey", "OK", 0.001, f"caller-{n}", "127.0.0.1")
    # Written early each time the window holds MAX_KEYS distinct callers.
    assert len(access_lines.of("GetKey")) == 20_000
    log.flush()
    assert len(access_lines.of("GetKey")) == 25_000
