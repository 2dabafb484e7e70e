"""A page of a listing fits in an answer, whatever its records carry.

Handles carry a context and keys metadata, each up to 32 entries of 256 characters.
Before, ListHandles and ListKeys filled a page with as many records as asked (at most
1,000): a thousand handles with full contexts made a 9 MB answer, over the 4 MiB a gRPC
answer may be, and gRPC refused every such page itself (RESOURCE_EXHAUSTED "Sent message
larger than max", without details) after the server had read and converted all of it.
The owner could not list its handles a thousand at a time, and each attempt cost the
server the whole page. Now a page stops once its records weigh about 1 MiB, and its
token goes on after the last one (AIP-158: a page may hold fewer than asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from keyturn.v1 import handles_pb2, keys_pb2
from keyturn_server.domain.paging import PAGE_BYTES, fitted
from tests.harness import Harness

#: As much as a map may hold: 32 entries, 64-character keys, 256-character values.
FULL = {f"{n:02d}".ljust(64, "k"): "v" * 256 for n in range(32)}
RECORDS = 1000


async def _in_chunks(make: Callable[[], Awaitable[Any]], count: int) -> None:
    for _ in range(count // 50):
        await asyncio.gather(*(make() for _ in range(50)))


async def _walk(list_page: Callable[[str], Awaitable[Any]], items: str) -> tuple[list[Any], int]:
    pages: list[list[Any]] = []
    token = ""
    while True:
        page = await list_page(token)
        pages.append(list(getattr(page, items)))
        assert page.total_size == RECORDS
        token = page.next_page_token
        if not token:
            return pages, len(pages)


async def test_a_thousand_handles_with_full_contexts_are_listed_in_pages_that_fit(
    server: Harness,
) -> None:
    owner = await server.client_for("service", "full-contexts")
    device = handles_pb2.GenerateHandleRequest(type="device", context=FULL)
    await _in_chunks(lambda: owner.handles.GenerateHandle(device), RECORDS)

    def page(token: str) -> Awaitable[Any]:
        request = handles_pb2.ListHandlesRequest(page_size=1000, page_token=token)
        return owner.handles.ListHandles(request)  # type: ignore[no-any-return]

    pages, count = await _walk(page, "handles")
    assert count > 1 and all(len(p) < RECORDS for p in pages)
    ids = [h.id for p in pages for h in p]
    assert len(ids) == len(set(ids)) == RECORDS  # every handle once, none skipped
    assert all(dict(h.context) == FULL for p in pages for h in p)


async def test_a_thousand_keys_with_full_metadata_are_listed_in_pages_that_fit(
    server: Harness,
) -> None:
    owner = await server.client_for("service", "full-metadata")
    session = keys_pb2.GenerateKeyRequest(type="session", metadata=FULL)
    await _in_chunks(lambda: owner.keys.GenerateKey(session), RECORDS)

    def page(token: str) -> Awaitable[Any]:
        request = keys_pb2.ListKeysRequest(page_size=1000, page_token=token)
        return owner.keys.ListKeys(request)  # type: ignore[no-any-return]

    pages, count = await _walk(page, "keys")
    assert count > 1
    ids = [k.id for p in pages for k in p]
    assert len(ids) == len(set(ids)) == RECORDS


@pytest.mark.parametrize(
    ("weights", "kept", "cut"),
    [
        ([10, 10, 10], 3, False),
        ([PAGE_BYTES // 2, PAGE_BYTES // 2, 1], 2, True),
        ([PAGE_BYTES * 2, 1], 1, True),  # at least one record, or a walk never moves on
        ([], 0, False),
    ],
    ids=["small", "over-budget", "one-heavy-record", "empty"],
)
def test_a_page_keeps_the_records_that_fit_its_budget(
    weights: list[int], kept: int, cut: bool
) -> None:
    assert fitted(weights, lambda weight: weight) == (weights[:kept], cut)
