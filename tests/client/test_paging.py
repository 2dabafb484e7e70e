"""Async iterators walk every page of a list without the caller seeing a page token."""

from __future__ import annotations

from keyturn import AsyncClient


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
