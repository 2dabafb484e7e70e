"""A list's total (``total_size``) is counted for its first page only and carried in the
page token.

Before, every page counted every matching row again: walking an audit log of two
million entries (a few days of a busy service) by a principal's name cost about 180 ms of
counting per page on this machine, and the log holds a year of entries by default.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.store.sql.statements import SqlBase
from tests.harness import Harness, fails

SEVEN = 7


def count_counts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables the store counts rows of, in order."""
    counted: list[str] = []
    count = SqlBase._count

    def recorded(self: SqlBase, table: str, where: Any) -> int:
        counted.append(table)
        return count(self, table, where)

    monkeypatch.setattr(SqlBase, "_count", recorded)
    return counted


Lister = Callable[[str], Awaitable[Any]]


async def walk(list_page: Lister) -> list[Any]:
    pages, token = [], ""
    while True:
        page = await list_page(token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages


def listers(server: Harness) -> dict[str, Lister]:
    admin = server.admin

    def keys(token: str) -> Awaitable[Any]:
        request = keys_pb2.ListKeysRequest(type="api", page_size=2, page_token=token)
        return admin.keys.ListKeys(request)  # type: ignore[no-any-return]

    def handles(token: str) -> Awaitable[Any]:
        request = handles_pb2.ListHandlesRequest(type="device", page_size=2, page_token=token)
        return admin.handles.ListHandles(request)  # type: ignore[no-any-return]

    def audit(token: str) -> Awaitable[Any]:
        request = admin_pb2.ListAuditEventsRequest(
            action="handle.generate", page_size=2, page_token=token
        )
        return admin.admin.ListAuditEvents(request)  # type: ignore[no-any-return]

    return {"keys": keys, "handles": handles, "audit": audit}


async def make_seven(server: Harness) -> None:
    for _ in range(SEVEN):
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))


@pytest.mark.parametrize("listing", ["keys", "handles", "audit"])
async def test_a_walk_counts_its_total_once_and_every_page_reports_it(
    server: Harness, monkeypatch: pytest.MonkeyPatch, listing: str
) -> None:
    await make_seven(server)
    counted = count_counts(monkeypatch)

    pages = await walk(listers(server)[listing])

    assert len(pages) == 4
    assert [page.total_size for page in pages] == [SEVEN] * 4
    assert len(counted) == 1, f"counted {len(counted)} times for {len(pages)} pages"


async def test_later_pages_report_the_first_pages_total_and_a_new_walk_counts_again(
    server: Harness,
) -> None:
    await make_seven(server)
    list_keys = listers(server)["keys"]
    first = await list_keys("")
    await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))

    second = await list_keys(first.next_page_token)

    assert second.total_size == SEVEN  # as of the first page: AIP-158's estimate
    assert (await list_keys("")).total_size == SEVEN + 1


@pytest.mark.parametrize("listing", ["keys", "audit"])
async def test_a_token_whose_carried_total_was_altered_is_refused(
    server: Harness, listing: str
) -> None:
    await make_seven(server)
    list_page = listers(server)[listing]
    token = (await list_page("")).next_page_token
    payload, _, tag = token.partition(".")
    cursor = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    cursor["n"] = 1
    forged = base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode())

    failure = await fails(list_page(f"{forged.decode().rstrip('=')}.{tag}"))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in failure.violations
