"""Fixtures of the client tests: the client under test, connected to the real in-process
server of ``tests/conftest.py`` with the admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keyturn import AsyncClient
from tests.harness import Harness


@pytest.fixture
async def client(server: Harness) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address, token=server.admin_token) as connected:
        yield connected
