"""Chaos tests: replicas as real processes on a PostgreSQL cluster of their own, which
the tests restart, crash, fail over, and whose sessions they kill.

Run as a stage of `make test` (scripts/test.sh), one test at a time: they measure failover
on the wall clock. Without PostgreSQL's binaries they are skipped, unless
KEYTURN_REQUIRE_ALL is set.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.postgres import Cluster, pg_bin, throwaway_root
from tests.chaos.replicas import Replica


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if pg_bin() is not None or os.environ.get("KEYTURN_REQUIRE_ALL"):
        return
    for item in items:
        if "chaos" in item.nodeid:
            item.add_marker(pytest.mark.skip(reason="PostgreSQL is not installed"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of the module's own, which its tests may restart or crash."""
    with throwaway_root() as root:
        primary = Cluster(root)
        primary.init()
        primary.start()
        yield primary


@pytest.fixture
def database(cluster: Cluster) -> str:
    return cluster.create_database()


ReplicaFactory = Callable[..., list[Replica]]


@pytest.fixture
async def make_replicas(tmp_path: Path) -> AsyncIterator[ReplicaFactory]:
    """make_replicas(count, store_url, *extra flags): replicas not started yet, each with
    a data dir of its own; all killed at the end of the test."""
    made: list[Replica] = []

    def make(count: int, store: str, *extra: str) -> list[Replica]:
        batch = [
            Replica(tmp_path / f"replica-{len(made) + i}", store, *extra) for i in range(count)
        ]
        for replica in batch:
            replica.data_dir.mkdir(mode=0o700)
        made.extend(batch)
        return batch

    try:
        yield make
    finally:
        for replica in made:
            await replica.close()
            replica.kill()
