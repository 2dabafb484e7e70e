"""The sweep that ends open streams whose credentials were revoked (api/standing.py), with
a hand-written authenticator in place of the real one."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from keyturn_server.api import standing as standing_module
from keyturn_server.api.standing import Standing, Sweep
from keyturn_server.domain.access import Principal, Role
from keyturn_server.domain.errors import Unauthenticated


class Caller:
    def __init__(self, authorization: str) -> None:
        self.authorization = authorization
        self.peer = "ipv4:127.0.0.1:1"


class Authenticator:
    """Names the principal of each live bearer credential; counts how often each is asked."""

    def __init__(self, live: dict[str, Principal]) -> None:
        self.live = live
        self.asked: Counter[str] = Counter()

    def identify(self, caller: Any, recheck: bool = False) -> Principal:
        self.asked[caller.authorization] += 1
        found = self.live.get(caller.authorization)
        if found is None:
            raise Unauthenticated("revoked", reason="INVALID_ACCESS_TOKEN")
        return found


async def open_stream(sweep: Sweep, auth: Authenticator, credential: str) -> Standing:
    """A stream's task, parked where a stream waits for its next event."""
    opened: asyncio.Future[Standing] = asyncio.get_running_loop().create_future()

    async def stream() -> None:
        standing = Standing(auth, Caller(credential), auth.live[credential])  # type: ignore[arg-type]
        with sweep.watching(standing):
            opened.set_result(standing)
            await asyncio.sleep(3600)

    asyncio.get_running_loop().create_task(stream())
    return await opened


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("revoke", "CREDENTIALS_REVOKED"),
        ("another role", "CREDENTIALS_CHANGED"),
    ],
)
async def test_a_sweep_ends_every_idle_stream_of_a_changed_credential_and_asks_once(
    monkeypatch: pytest.MonkeyPatch, change: str, reason: str
) -> None:
    monkeypatch.setattr(standing_module, "RECHECK_SECONDS", 0.05)
    thief, other = Principal("thief", Role.SERVICE, "token"), Principal("ok", Role.SERVICE, "token")
    auth = Authenticator({"Bearer a": thief, "Bearer b": other})
    sweep = Sweep()
    theirs = [await open_stream(sweep, auth, "Bearer a") for _ in range(3)]
    kept = await open_stream(sweep, auth, "Bearer b")
    await asyncio.sleep(0.08)  # one sweep: nothing changed
    assert all(s.ended is None for s in (*theirs, kept))

    if change == "revoke":
        del auth.live["Bearer a"]
    else:
        auth.live["Bearer a"] = Principal("thief", Role.AUDITOR, "token")
    asked = auth.asked["Bearer a"]
    await asyncio.sleep(0.12)

    assert auth.asked["Bearer a"] == asked + 1  # once for its three streams, which then end
    for ended in theirs:
        assert ended.ended is not None and ended.ended.reason == reason
        assert ended.task is not None and ended.task.cancelled()
    assert kept.ended is None and kept.task is not None and not kept.task.done()
    kept.task.cancel()
