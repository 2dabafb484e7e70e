"""One meaning of status: a key's or handle's status as Python computes it (``status()``),
as the List filters select it and as the statistics count it are the same, also exactly
at the warn and expire instants and a microsecond either side of them.

Runs on a real store of the backend under test: SQLite, or PostgreSQL under
KEYTURN_TEST_BACKEND=postgres.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.handles import (
    Handle,
    HandleSchedule,
    HandleState,
    HandleStatus,
)
from keyturn_server.domain.keys import Key, KeySchedule, KeyState, KeyStatus
from keyturn_server.domain.repositories import Repository
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.schema import migrations
from keyturn_server.store.sql import SqlRepository
from keyturn_server.store.sqlite_connections import connect
from tests.harness import BACKEND, fresh_postgres_database

NOW = datetime(2031, 5, 17, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
#: Where a deadline may lie relative to now: on it, a microsecond either side, and far off.
OFFSETS = [-timedelta(days=1), -timedelta(seconds=1), -US, timedelta(0), US, timedelta(days=1)]
_names = itertools.count()
INTEGRITY = RowIntegrity(Protection.derived_from(b"status" * 6))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    if BACKEND == "postgres":
        import psycopg
        from psycopg.rows import dict_row

        from keyturn_server.store.postgres import PgConnection

        pg = psycopg.connect(fresh_postgres_database(), autocommit=True, row_factory=dict_row)
        for _, sql in migrations("postgres"):
            pg.execute(sql)
        yield SqlRepository(PgConnection(pg), integrity=INTEGRITY)
        pg.close()
        return
    conn = connect(tmp_path_factory.mktemp("status") / "status.db")
    conn.execute("PRAGMA synchronous = OFF")  # a scratch file: no need to wait for the disk
    for _, sql in migrations("sqlite"):
        conn.executescript(sql)
    yield SqlRepository(conn, integrity=INTEGRITY)
    conn.close()


def _check(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


offsets = st.sampled_from(OFFSETS)
key_records = st.tuples(
    st.sampled_from(list(KeyState)),
    offsets,
    st.none() | offsets,
    st.none() | offsets,
    st.none() | offsets,
)
handle_records = st.tuples(st.sampled_from(list(HandleState)), offsets, offsets, offsets)


def _key(
    state: KeyState,
    expire: timedelta,
    warn: timedelta | None,
    rotate: timedelta | None,
    destroy: timedelta | None = None,
) -> Key:
    return Key(
        id="key_x",
        type="x",
        algorithm="aes-256-gcm",
        key_length=32,
        state=state,
        primary_version=1,
        owner="x",
        created_for="",
        metadata={},
        create_time=NOW - timedelta(days=2),
        schedule=KeySchedule(timedelta(days=30), timedelta(days=7), timedelta(days=90)),
        exportable=False,
        next_rotation_time=None if rotate is None else NOW + rotate,
        expire_time=NOW + expire,
        warn_time=None if warn is None else NOW + warn,
        destroy_time=None if destroy is None else NOW + destroy,
    )


def _handle(state: HandleState, expire: timedelta, warn: timedelta, rotate: timedelta) -> Handle:
    return Handle(
        id="hdl_x",
        type="x",
        algorithm="sha256",
        state=state,
        owner="x",
        created_for="",
        context={},
        usage_count=1,
        max_usage=100,
        create_time=NOW - timedelta(days=2),
        rotate_time=NOW + rotate,
        expire_time=NOW + expire,
        warn_time=NOW + warn,
        schedule=HandleSchedule(*(timedelta(hours=1),) * 4),
    )


Statuses = tuple[dict[str, str], dict[str, str], dict[str, int]]


def _key_statuses(repo: Repository, keys: list[Key]) -> Statuses:
    """Stored under a type and owner of their own: each key's status as Python computes
    it, as the List filters select it, and the number of each as the counts say."""
    group = f"k{next(_names)}"
    keys = [
        dataclasses.replace(k, id=f"key_{group}_{n}", type=group, owner=group)
        for n, k in enumerate(keys)
    ]
    for key in keys:
        repo.insert_key(key)
    python = {key.id: key.status(NOW).value for key in keys}
    filtered = {}
    for status in KeyStatus:
        listed = repo.list_keys(NOW, group, status, group, None, 1000)
        assert listed.total == len(listed.items)
        filtered.update({key.id: status.value for key in listed.items})
    counted = {s: n for t, s, n, _, _ in repo.key_counts(NOW) if t == group}
    return python, filtered, counted


def _handle_statuses(repo: Repository, handles: list[Handle]) -> Statuses:
    group = f"h{next(_names)}"
    handles = [
        dataclasses.replace(h, id=f"hdl_{group}_{n}", type=group, owner=group)
        for n, h in enumerate(handles)
    ]
    for handle in handles:
        repo.insert_handle(handle)
    python = {handle.id: handle.status(NOW).value for handle in handles}
    filtered = {}
    for status in HandleStatus:
        listed = repo.list_handles(NOW, group, status, group, None, 1000)
        assert listed.total == len(listed.items)
        filtered.update({handle.id: status.value for handle in listed.items})
    counted = {s: n for t, s, n, _, _ in repo.handle_counts(NOW) if t == group}
    return python, filtered, counted


def test_key_status_agrees_at_every_boundary(repo: Repository) -> None:
    """Every state, with its expiry, its warning (or none) and its destroy time (or none:
    a removed key past it is destroyed, whether or not the scheduler has wiped it) on
    now, a microsecond either side, and further off."""
    keys = [
        _key(state, expire, warn, warn, destroy)
        for state, expire, warn, destroy in itertools.product(
            KeyState, OFFSETS, [None, *OFFSETS], [None, *OFFSETS]
        )
    ]
    python, filtered, counted = _key_statuses(repo, keys)
    assert filtered == python
    assert counted == Counter(python.values())
    assert set(python.values()) == {s.value for s in KeyStatus}  # not vacuous


def test_handle_status_agrees_at_every_boundary(repo: Repository) -> None:
    handles = [
        _handle(state, expire, warn, warn + US)
        for state, expire, warn in itertools.product(HandleState, OFFSETS, OFFSETS)
    ]
    python, filtered, counted = _handle_statuses(repo, handles)
    assert filtered == python
    assert counted == Counter(python.values())
    assert set(python.values()) == {s.value for s in HandleStatus}


def test_key_status_agrees_for_any_mix_of_keys(repo: Repository) -> None:
    @_check(100)
    @given(records=st.lists(key_records, min_size=1, max_size=8))
    def run(
        records: list[
            tuple[KeyState, timedelta, timedelta | None, timedelta | None, timedelta | None]
        ],
    ) -> None:
        python, filtered, counted = _key_statuses(repo, [_key(*r) for r in records])
        assert filtered == python
        assert counted == Counter(python.values())

    run()


def test_handle_status_agrees_for_any_mix_of_handles(repo: Repository) -> None:
    @_check(100)
    @given(records=st.lists(handle_records, min_size=1, max_size=8))
    def run(records: list[tuple[HandleState, timedelta, timedelta, timedelta]]) -> None:
        python, filtered, counted = _handle_statuses(repo, [_handle(*r) for r in records])
        assert filtered == python
        assert counted == Counter(python.values())

    run()
