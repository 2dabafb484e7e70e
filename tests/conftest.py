from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyturn_server.clock import ManualClock
from tests.harness import Harness


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Harness]:
    """A real server with a fixed master key, a temp data dir and a fake clock."""
    harness = Harness(tmp_path / "data", clock)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
