"""Destroyed key material is gone from PostgreSQL's table pages, not only from the row
(store/postgres/scrub.py). Run with KEYTURN_TEST_BACKEND=postgres."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import psycopg
import pytest

from keyturn.v1 import keys_pb2, resources_pb2
from keyturn_server.store.postgres import PostgresStore, scrub
from tests.harness import Harness

pytestmark = pytest.mark.postgres

#: Every page of a table, as PostgreSQL keeps it (pageinspect).
_PAGES = """
SELECT get_raw_page(%s, n::int) AS page
  FROM generate_series(0, pg_relation_size(%s) / current_setting('block_size')::int - 1) n
"""


def copies(url: str, value: bytes, table: str = "key_versions") -> int:
    """How many times ``value`` is in ``table``'s pages, live rows and dead ones."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        except psycopg.Error:
            pytest.skip("pageinspect is not available in this PostgreSQL")
        return sum(bytes(row[0]).count(value) for row in conn.execute(_PAGES, (table, table)))


async def destroy_by_removal(server: Harness, key_id: str) -> None:
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key_id))
    await server.advance(timedelta(days=1, seconds=1))


async def destroy_by_age(server: Harness, key_id: str) -> None:
    await server.advance(timedelta(days=90, seconds=1))  # version 1's max lifetime


@pytest.mark.parametrize("destroy", [destroy_by_removal, destroy_by_age], ids=["removed", "aged"])
async def test_destroyed_material_is_gone_from_the_tables_pages(
    server: Harness, destroy: Callable[[Harness, str], Awaitable[None]]
) -> None:
    """A copy of the database's files taken after the destruction, with MASTER_KEY, must
    not open what Keyturn said was destroyed. Before, every older version of the row
    (each Encrypt's nonce reservation wrote one) stayed in the table's pages as a dead
    tuple, and a VACUUM only marked its space free: the sealed material stayed there."""
    url = server.settings.store
    assert url is not None
    ids = [
        (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key.id
        for _ in range(20)
    ]
    victim = ids[7]
    for key_id in ids:  # rows written again and again: their older versions pile up
        await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key_id, plaintext=b"x"))
    sealed = await server.sealed_material(victim, 1)
    assert sealed is not None and copies(url, sealed) > 0

    await destroy(server, victim)
    gone = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=victim))
    assert gone.versions[0].state != resources_pb2.KEY_VERSION_STATE_ENABLED
    assert await server.sealed_material(victim, 1) is None
    for _ in range(50):  # the table is rewritten just after the commit, by another thread
        if copies(url, sealed[-16:]) == 0:
            break
        await asyncio.sleep(0.1)
    assert copies(url, sealed) == 0
    assert copies(url, sealed[-16:]) == 0  # not even its tag
    other = await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=ids[8], plaintext=b"x"))
    assert other.key_version >= 1  # the other keys serve on


async def test_a_rewrite_that_readers_noticed_is_spaced_an_hour_from_the_next(
    server: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The rewrite locks the table: on a large one, reads of keys that wait past their
    50 ms are refused for a second (measured: 30,000 versions, 8 MB). Such a rewrite is
    said once in the log, and the next comes an hour later at the soonest."""
    monkeypatch.setattr(scrub, "QUIET", 0.0)  # every rewrite is noticed, as on a large table
    assert server.app is not None
    store = server.app.store
    assert isinstance(store, PostgresStore)
    ids = [
        (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key.id
        for _ in range(2)
    ]
    with caplog.at_level(logging.INFO):
        await destroy_by_removal(server, ids[0])
        for _ in range(50):
            if store.scrub.done:
                break
            await asyncio.sleep(0.1)
        assert store.scrub.done == 1
        await destroy_by_removal(server, ids[1])
        await asyncio.sleep(1.5)
        assert store.scrub.done == 1  # waits for its hour
    said = [r.getMessage() for r in caplog.records if "rewriting key_versions" in r.getMessage()]
    assert len(said) == 1 and "minutes" in said[0], said
