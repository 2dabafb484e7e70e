"""Async iterators walk every page of a list without the caller seeing a page token."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import keyturn
from keyturn import AsyncClient
from keyturn.v1 import keys_pb2


async def test_iter_keys_yields_every_key_of_a_type_once_across_pages(
    client: AsyncClient,
) -> None:
    encryption = [(await client.generate_key("encryption")).key.id for _ in range(5)]
    await client.generate_key("api")

    seen = [key.id async for key in client.iter_keys(type="encryption", page_size=2)]
    assert sorted(seen) == sorted(encryption)
    first_page = await client.list_keys(type="encryption", page_size=2)
    assert first_page.next_page_token and first_page.total_size == 5


async def test_a_limit_stops_the_walk_early(client: AsyncClient) -> None:
    for _ in range(5):
        await client.generate_key("session")
    limited = [key async for key in client.iter_keys(page_size=2, limit=3)]
    assert len(limited) == 3


async def test_a_limit_met_at_the_end_of_a_page_asks_for_no_further_page(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(5):
        await client.generate_key("session")
    asked: list[str] = []
    list_keys = client.list_keys

    async def counting(**kwargs: Any) -> keys_pb2.ListKeysResponse:
        asked.append(kwargs["page_token"])
        return await list_keys(**kwargs)

    monkeypatch.setattr(client, "list_keys", counting)
    limited = [key async for key in client.iter_keys(page_size=2, limit=4)]
    assert len(limited) == 4 and len(asked) == 2  # not a third page to find out


async def test_iter_handles_filters_by_type_and_status(client: AsyncClient) -> None:
    workflow = {(await client.generate_handle("workflow")).handle.id for _ in range(3)}
    revoked = (await client.generate_handle("workflow")).handle.id
    await client.remove_handle(revoked)
    await client.generate_handle("device")

    active = {
        h.id async for h in client.iter_handles(type="workflow", status="active", page_size=1)
    }
    assert active == workflow


async def test_iter_audit_events_walks_the_log_newest_first(client: AsyncClient) -> None:
    ids = [(await client.generate_key("api")).key.id for _ in range(4)]
    newest_first = [
        e.resource_id
        async for e in client.iter_audit_events(action="key.generate", descending=True, page_size=3)
    ]
    assert newest_first == list(reversed(ids))
    sequences = [e.sequence async for e in client.iter_audit_events(page_size=2)]
    assert sequences == sorted(sequences) and len(sequences) == len(set(sequences))


@pytest.mark.parametrize("cycle", [1, 2], ids=["same-token-again", "two-token-cycle"])
async def test_a_repeated_page_token_ends_the_walk_with_an_error_instead_of_looping(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, cycle: int
) -> None:
    # A proxy (or a buggy server) that answers a page with a token already followed
    # would otherwise make iter_keys fetch the same pages for ever.
    for _ in range(5):
        await client.generate_key("session")
    list_keys = client.list_keys
    tokens: list[str] = []

    async def replaying(**kwargs: Any) -> keys_pb2.ListKeysResponse:
        page = await list_keys(**kwargs)
        if page.next_page_token:
            tokens.append(page.next_page_token)
        if len(tokens) > cycle:
            page.next_page_token = tokens[-1 - cycle]
        return page

    monkeypatch.setattr(client, "list_keys", replaying)
    walked: list[str] = []

    async def walk() -> None:
        async for key in client.iter_keys(page_size=1):
            walked.append(key.id)

    with pytest.raises(keyturn.ServerError) as caught:
        await asyncio.wait_for(walk(), timeout=10)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert caught.value.reason == "PAGE_TOKEN_REPEATED"
    assert len(walked) == len(set(walked)) == cycle + 1  # each page given once, then the error
    assert all(token not in str(caught.value) for token in tokens)
