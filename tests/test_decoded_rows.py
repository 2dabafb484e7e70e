"""Rows kept decoded and verified (store/integrity.DecodedRows): a validation's handle and
secret rows read back exactly as this process last saw or wrote them are not decoded or
MAC'd again; any other value is, so a row changed behind the server's back is never taken
from memory. On SQLite, and on PostgreSQL under KEYTURN_TEST_BACKEND=postgres."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import handles_pb2
from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.handles import Handle, HandleSecret, RateWindow
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.store import rows
from keyturn_server.store.sqlite import SqliteStore
from tests.harness import BACKEND, Harness, fails, open_store
from tests.security.database import tamper
from tests.test_coalesce import TALLY

SECRET = HandleSecret(b"s" * 32, TALLY.id, 1, TALLY.create_time)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(tmp_path)
    opened.protect(Protection.derived_from(os.urandom(32)))

    def setup(repo: object) -> None:
        repo.insert_handle(TALLY)  # type: ignore[attr-defined]
        repo.insert_secret(SECRET)  # type: ignore[attr-defined]

    await opened.write(setup)
    yield opened
    await opened.close()


async def found(store: Store) -> tuple[HandleSecret, Handle]:
    return await store.write(lambda repo: repo.secrets_with_handles([SECRET.digest])[SECRET.digest])


def used(handle: Handle, times: int = 1) -> Handle:
    rate = handle.rate
    return dataclasses.replace(
        handle,
        usage_count=handle.usage_count + times,
        last_used_time=TALLY.create_time + timedelta(seconds=times),
        rate=RateWindow(TALLY.create_time, rate.previous, rate.current + times),
    )


async def test_a_row_read_back_unchanged_is_the_record_already_verified(store: Store) -> None:
    secret, handle = await found(store)
    again_secret, again = await found(store)
    assert again is handle and again_secret is secret  # neither decoded nor MAC'd again


async def test_a_row_read_back_as_written_is_the_record_written(store: Store) -> None:
    _, read = await found(store)
    written = used(read)
    await store.write(lambda repo: repo.update_handle(read, written))
    _, again = await found(store)
    assert again is written
    # ...and it is what a fresh decode of the stored row gives.
    store.integrity.decoded.clear()  # type: ignore[attr-defined]
    _, decoded = await found(store)
    assert decoded == written and decoded is not written


async def test_a_write_rolled_back_is_not_taken_from_memory(store: Store) -> None:
    # The memory is updated when the row is written, before the commit: a unit that
    # fails afterwards (or a database that goes away before the commit) leaves the stored
    # row as it was, and that is what the next read must give.
    _, read = await found(store)

    def fails_after_its_update(repo: Repository) -> None:
        repo.update_handle(read, used(read, 7))
        raise RuntimeError("the unit fails after its update")

    with pytest.raises(RuntimeError):
        await store.write(fails_after_its_update)
    _, again = await found(store)
    assert again.usage_count == read.usage_count and again == read


async def test_a_change_by_another_writer_is_decoded_afresh(store: Store, tmp_path: Path) -> None:
    _, read = await found(store)
    # Another worker (a second store on the same database and keys) counts 5 uses.
    if BACKEND == "postgres":
        pytest.skip("a second PostgreSQL store is exercised by tests/test_replicas.py")
    other = SqliteStore(tmp_path / "keyturn.db")
    other.protect(store.integrity.protection)  # type: ignore[attr-defined]
    _, theirs = await other.write(
        lambda repo: repo.secrets_with_handles([SECRET.digest])[SECRET.digest]
    )
    await other.write(lambda repo: repo.update_handle(theirs, used(theirs, 5)))
    await other.close()
    _, again = await found(store)
    assert again.usage_count == read.usage_count + 5 and again is not read


async def test_a_forged_row_is_never_taken_from_memory(store: Store, tmp_path: Path) -> None:
    if BACKEND == "postgres":
        pytest.skip("the end-to-end test below forges rows on either backend")
    _, read = await found(store)
    written = used(read, 3)
    await store.write(lambda repo: repo.update_handle(read, written))
    # Behind the server's back: the usage count reset, the MAC left as it was.
    with sqlite3.connect(tmp_path / "keyturn.db") as conn:
        conn.execute("UPDATE handles SET usage_count = 0 WHERE id = ?", (TALLY.id,))
    assert await store.write(lambda repo: repo.secrets_with_handles([SECRET.digest])) == {}


async def test_validations_refuse_a_forged_row_after_using_it_from_memory(server: Harness) -> None:
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    request = handles_pb2.ValidateHandleRequest(token=issued.token)
    for _ in range(3):  # the row is now kept as last written
        assert (await server.admin.handles.ValidateHandle(request)).validation.valid
    await tamper(server, ("UPDATE handles SET usage_count = 0 WHERE id = ?", (issued.handle.id,)))
    answer = await server.admin.handles.ValidateHandle(request)
    assert not answer.validation.valid  # a tampered pair validates as an unknown token
    refused = await fails(
        server.admin.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=issued.handle.id))
    )
    assert refused.code == grpc.StatusCode.DATA_LOSS


#: The largest context a handle may carry: 32 entries, 64-character keys, 256-character
#: values (8.4 KB as stored).
FULL = {f"{n:02d}".ljust(64, "k"): "v" * 256 for n in range(32)}


async def test_a_handle_with_a_full_context_is_decoded_afresh_not_kept(tmp_path: Path) -> None:
    """The caches hold 16,384 rows each, sized for ordinary rows: kept decoded, rows
    with full contexts took a serving process to ~600 MB (see rows.CACHED_CONTEXT)."""
    opened = open_store(tmp_path)
    opened.protect(Protection.derived_from(os.urandom(32)))
    large = dataclasses.replace(TALLY, context=FULL)
    await opened.write(lambda repo: (repo.insert_handle(large), repo.insert_secret(SECRET)))
    try:
        settled = rows._settled.cache_info().currsize
        _, first = await found(opened)
        _, again = await found(opened)
        assert again == first and again is not first and dict(again.context) == FULL
        assert rows._settled.cache_info().currsize == settled
        assert large.id not in opened.integrity.decoded.handles  # type: ignore[attr-defined]
    finally:
        await opened.close()


async def test_validating_handles_with_full_contexts_keeps_no_copy_of_them(
    server: Harness,
) -> None:
    owner = await server.client_for("service", "full-contexts")
    device = handles_pb2.GenerateHandleRequest(type="device", context=FULL)
    made = [await owner.handles.GenerateHandle(device) for _ in range(200)]
    validate = [handles_pb2.ValidateHandleRequest(token=m.token) for m in made]
    await owner.handles.ValidateHandle(validate[0])  # warm up
    gc.collect()
    tracemalloc.start()
    try:
        for request in validate:
            assert (await owner.handles.ValidateHandle(request)).validation.valid
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Before: about 30 KB each, the decoded row and its stored values kept until 16,384
    # rows had pushed them out.
    assert retained / len(made) < 4096, f"{retained / len(made):.0f} bytes kept per handle"


@pytest.mark.parametrize(
    ("context", "kept"),
    [({}, True), ({"ip": "192.0.2.1", "user_agent": "curl/8"}, True), (FULL, False)],
    ids=["empty", "ordinary", "full"],
)
def test_only_rows_with_small_contexts_are_kept_decoded(
    context: dict[str, str], kept: bool
) -> None:
    values = [None] * len(rows.HANDLE_COLUMNS)
    values[rows.CONTEXT_AT] = json.dumps(context)
    assert rows.kept(tuple(values)) is kept
