"""Calls the API marks idempotent are retried while the server is UNAVAILABLE, within the
call's one deadline; the others never are. tests/client/test_policy_table.py runs the
shared cases of every client against a scripted server."""

from __future__ import annotations

import asyncio
import time

import pytest

import keyturn
from keyturn import AsyncClient, Backoff, RetryPolicy
from tests.client import downtime
from tests.harness import Harness


async def test_a_read_started_while_the_server_is_down_succeeds_once_it_is_back(
    server: Harness, client: AsyncClient
) -> None:
    key = (await client.generate_key("encryption")).key
    address = await downtime.stop(server)

    read = asyncio.ensure_future(client.get_key(key.id))
    await asyncio.sleep(0.8)
    assert not read.done(), "the read should still be retrying"
    await downtime.start(server, address)

    assert (await asyncio.wait_for(read, 15)).id == key.id


async def test_a_listing_resumes_at_its_next_page_after_an_outage(
    server: Harness, client: AsyncClient
) -> None:
    created = {(await client.generate_key("api")).key.id for _ in range(3)}
    keys = client.iter_keys(page_size=2)
    first_page = [await anext(keys), await anext(keys)]
    address = await downtime.stop(server)

    second_page = asyncio.ensure_future(anext(keys))
    await asyncio.sleep(0.5)
    await downtime.start(server, address)

    last = await asyncio.wait_for(second_page, 15)
    assert {k.id for k in [*first_page, last]} == created


async def test_a_write_to_a_server_that_is_down_fails_at_once(
    server: Harness, client: AsyncClient
) -> None:
    await downtime.stop(server)
    started = time.monotonic()
    with pytest.raises(keyturn.Unavailable):
        await client.generate_key("encryption")
    assert time.monotonic() - started < 2.0


async def test_a_read_gives_up_at_its_deadline(server: Harness) -> None:
    policy = RetryPolicy(backoff=Backoff(0.05, 0.2), max_attempts=1000)
    async with AsyncClient(server.address, token=server.admin_token, retry=policy) as client:
        await downtime.stop(server)
        started = time.monotonic()
        with pytest.raises(keyturn.Unavailable):
            await client.list_keys(timeout=0.6)
        assert 0.4 < time.monotonic() - started < 3.0


async def test_encrypt_started_while_the_server_is_down_succeeds_once_it_is_back(
    server: Harness, client: AsyncClient
) -> None:
    key = (await client.generate_key("encryption")).key
    address = await downtime.stop(server)

    sealing = asyncio.ensure_future(client.encrypt(key.id, b"payload"))
    await asyncio.sleep(0.5)
    assert not sealing.done(), "Encrypt (IDEMPOTENT) should still be retrying"
    await downtime.start(server, address)

    sealed = await asyncio.wait_for(sealing, 15)
    assert (await client.decrypt(key.id, sealed.ciphertext)).plaintext == b"payload"


async def test_no_retry_fails_a_read_at_once(server: Harness) -> None:
    async with AsyncClient(
        server.address, token=server.admin_token, retry=keyturn.NO_RETRY
    ) as client:
        await downtime.stop(server)
        started = time.monotonic()
        with pytest.raises(keyturn.Unavailable):
            await client.get_health()
        assert time.monotonic() - started < 2.0
