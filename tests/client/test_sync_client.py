"""The blocking Client: the same calls as AsyncClient for code without an event loop.

The server runs on the test's event loop, so the blocking code runs on a worker thread,
as it would in a program of its own."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import keyturn
from keyturn import BlockingWatch, Client
from keyturn.v1 import events_pb2
from tests.harness import Harness


async def test_calls_iterators_and_errors_work_without_an_event_loop(server: Harness) -> None:
    def use() -> None:
        with Client(server.address, token=server.admin_token) as client:
            key = client.generate_key("encryption", user_id="user123").key
            assert client.get_key(key.id) == key
            client.generate_key("encryption")
            assert len(list(client.iter_keys(type="encryption", page_size=1))) == 2
            assert len(list(client.iter_keys(limit=1))) == 1
            with pytest.raises(keyturn.NotFound):
                client.get_key("key_" + "b" * 16)
            assert client.get_health().health.version
            assert client.get_key(key.id, timeout=5.0) == key  # the per-call deadline

    await asyncio.to_thread(use)


async def test_a_blocking_watch_yields_events_and_remembers_its_place(server: Harness) -> None:
    def use() -> None:
        with (
            Client(server.address, token=server.admin_token) as client,
            client.watch_expiring("handles") as watch,
        ):
            assert next(watch).kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
            handle = client.generate_handle("workflow").handle
            created = next(watch)
            assert created.handle.id == handle.id
            assert watch.last_sequence == created.sequence and watch.reconnects == 0

    await asyncio.to_thread(use)


async def test_an_abandoned_iterator_is_closed_with_the_client(server: Harness) -> None:
    def use() -> None:
        with Client(server.address, token=server.admin_token) as client:
            for _ in range(3):
                client.generate_key("api")
            keys = client.iter_keys(page_size=1)
            assert next(keys).type == "api"
            keys.close()  # stops the underlying async generator on the client's loop

    await asyncio.to_thread(use)


def read_in_a_thread(watch: BlockingWatch) -> threading.Event:
    """Iterates ``watch`` on a thread of its own; the event is set when the loop ends
    without an exception."""
    ended = threading.Event()

    def read() -> None:
        for _ in watch:
            pass
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    return ended


async def test_a_blocking_watch_closed_from_another_thread_ends_its_reader(
    server: Harness,
) -> None:
    def use() -> None:
        with Client(server.address, token=server.admin_token) as client:
            watch = client.watch_expiring("keys")
            assert next(watch).kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
            ended = read_in_a_thread(watch)
            time.sleep(0.3)  # the reader waits on the stream
            watch.close()
            assert ended.wait(5), "the reader is still waiting for an event"
            assert client.get_health().health.version  # the client still works

    await asyncio.to_thread(use)


async def test_closing_the_client_ends_a_blocking_watch_and_twice_is_harmless(
    server: Harness,
) -> None:
    def use() -> None:
        client = Client(server.address, token=server.admin_token)
        watch = client.watch_expiring("handles")
        assert next(watch).kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
        ended = read_in_a_thread(watch)
        time.sleep(0.3)
        client.close()
        assert ended.wait(5), "the reader is still waiting for an event"
        client.close()
        watch.close()
        with pytest.raises(keyturn.Cancelled):
            client.get_health()

    await asyncio.to_thread(use)
