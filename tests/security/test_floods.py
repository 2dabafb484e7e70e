"""Flood detection keyed by who presents, not by what it claims (issue 11, item 6).

It used to count refusals by the request's own ``context.ip``: a caller could rotate
claimed addresses to evade it, claim an innocent one to have it blamed, and past ~10k
distinct addresses every refusal scanned the whole table on the event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import UTC, datetime, timedelta

import pytest

from keyturn.v1 import handles_pb2 as R
from keyturn_server.clock import ManualClock
from keyturn_server.domain import tokens
from keyturn_server.domain.anomalies import AnomalyKind
from keyturn_server.domain.events import Event
from keyturn_server.domain.presenters import (
    FLOOD_THRESHOLD,
    PRINCIPAL_FACTOR,
    PresenterLimiter,
    presenter_peer,
)
from tests.harness import Client, Harness
from tests.http_support import HttpClient
from tests.security.attacks import validate

INNOCENT = "203.0.113.9"


def floods(events: list[Event]) -> list[dict[str, str]]:
    return [
        e.anomaly.evidence
        for e in events
        if e.anomaly is not None and e.anomaly.kind is AnomalyKind.INVALID_TOKEN_FLOOD
    ]


async def test_a_flood_names_the_presenter_not_the_ip_it_claims(server: Harness) -> None:
    thief = await server.client_for("service", "thief-svc")
    for _ in range(FLOOD_THRESHOLD + 5):
        await validate(thief, tokens.new_token("workflow", 64), {"ip": INNOCENT})
    [evidence] = floods(await server.events())
    assert evidence["principal"] == "thief-svc" and evidence["peer"] == "127.0.0.1"
    assert INNOCENT not in evidence.values()


async def test_rotating_claimed_ips_does_not_evade_detection(server: Harness) -> None:
    thief = await server.client_for("service", "thief-svc")
    for i in range(FLOOD_THRESHOLD + 5):
        await validate(
            thief, tokens.new_token("workflow", 64), {"ip": f"10.9.{i // 256}.{i % 256}"}
        )
    [evidence] = floods(await server.events())
    assert evidence["principal"] == "thief-svc"


async def _refuse_many(client: Client, count: int, first: int) -> None:
    forged = tokens.new_token("workflow", 64)
    for start in range(first, first + count, 500):
        await asyncio.gather(
            *[
                validate(client, forged, {"ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"})
                for i in range(start, min(start + 500, first + count))
            ]
        )
    # The server's handler tasks end just after their answers arrive: let them.
    for _ in range(100):
        if len(asyncio.all_tasks()) <= 8:
            break
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_fifty_thousand_claimed_ips_hold_no_more_than_ten(server: Harness) -> None:
    """What the server keeps (and so what each refusal may touch) does not grow with the
    number of distinct claimed addresses: after 50,000 of them as after 10."""
    thief = await server.client_for("service", "thief-svc")
    # The access log's records, which pytest keeps per test, are not the server's.
    access = logging.getLogger("keyturn.access")
    level = access.level
    access.setLevel(logging.WARNING)
    try:
        await _refuse_many(thief, 10, 0)
        gc.collect()
        before = len(gc.get_objects())
        await _refuse_many(thief, 50_000, 10)
        gc.collect()
        grown = len(gc.get_objects()) - before
    finally:
        access.setLevel(level)
    assert grown < 2_000, f"{grown} more objects held after 50,000 claimed addresses"
    assert server.app is not None and server.app.services is not None
    validator = server.app.services.handles._validator
    assert len(validator.presenters) <= 2  # the presenter, and its principal


# --- the limiter itself ---------------------------------------------------------------

T0 = datetime(2031, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_the_table_has_a_fixed_size_whatever_comes() -> None:
    limiter = PresenterLimiter(capacity=100)
    for i in range(10_000):
        limiter.refused(f"principal-{i}", f"10.0.{i >> 8}.{i & 255}", T0)
    assert len(limiter) == 100


def test_one_principal_from_many_peers_is_one_flood() -> None:
    limiter = PresenterLimiter()
    reported = [
        f
        for i in range(FLOOD_THRESHOLD * PRINCIPAL_FACTOR)
        if (f := limiter.refused("thief", f"10.0.0.{i}", T0 + timedelta(milliseconds=i)))
    ]
    assert [(f.principal, f.peer) for f in reported] == [("thief", "*")]
    at = ManualClock(T0 + timedelta(seconds=1))
    assert limiter.throttled("thief", "10.0.0.250", at, limit=20)
    assert not limiter.throttled("owner", "10.0.0.250", at, limit=20)


def test_a_principals_counter_survives_a_churn_of_peers() -> None:
    limiter = PresenterLimiter(capacity=64)
    for i in range(5_000):  # each refusal touches the principal-wide counter too
        limiter.refused("thief", f"2001:db8:{i:x}::1", T0)
    assert limiter.throttled("thief", "2001:db8:ffff::1", ManualClock(T0), limit=60)


def test_a_flood_is_reported_once_a_minute_and_the_throttle_slides_out() -> None:
    limiter = PresenterLimiter()
    first = [limiter.refused("p", "10.0.0.1", T0) for _ in range(100)]
    assert sum(f is not None for f in first) == 2  # the presenter, then the principal
    assert limiter.throttled("p", "10.0.0.1", ManualClock(T0), limit=60)
    later = T0 + timedelta(minutes=1, seconds=59)  # the previous minute weighs ~2%
    assert not limiter.throttled("p", "10.0.0.1", ManualClock(later), limit=60)
    again = [limiter.refused("p", "10.0.0.1", later) for _ in range(FLOOD_THRESHOLD)]
    assert sum(f is not None for f in again) == 1


@pytest.mark.parametrize(
    ("peer", "counted_as"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
        ("unix:/run/keyturn.sock", "unix:/run/keyturn.sock"),
    ],
)
def test_an_ipv6_host_is_counted_by_its_prefix(peer: str, counted_as: str) -> None:
    assert presenter_peer(peer) == counted_as


async def test_the_rest_apis_token_lookups_are_counted_and_throttled_as_validations(
    server: Harness,
) -> None:
    """GET and DELETE /api/key-management/handles/{token} look a token up. Before, a
    refused lookup was neither counted nor throttled: a thief could try stolen tokens
    there at its full rate, unseen by flood detection, and time the answers (a real
    token of another owner costs one more read than an unknown one)."""
    await server.set_policies(refused_per_presenter=5)
    thief = await server.client_for("service", "thief-svc")
    rest = HttpClient(server.http_url + "/api/key-management", thief.token)
    own = await thief.handles.GenerateHandle(R.GenerateHandleRequest(type="workflow"))
    assert (await rest.get(f"/handles/{own.token}")).status == 200
    for _ in range(FLOOD_THRESHOLD + 1):
        assert (await rest.get(f"/handles/{tokens.new_token('workflow', 64)}")).status == 404
    [evidence] = floods(await server.events())
    assert evidence["principal"] == "thief-svc" and evidence["peer"] == "127.0.0.1"
    # Throttled: a token it owns is answered as an unknown one until the minute passes.
    assert (await rest.get(f"/handles/{own.token}")).status == 404
    assert (await rest.delete(f"/handles/{own.token}", {})).status == 404
    await server.advance(timedelta(minutes=2))
    assert (await rest.get(f"/handles/{own.token}")).status == 200


async def test_an_owner_repeating_a_refused_token_records_it_once_a_minute(
    server: Harness,
) -> None:
    """A refusal by a caller with rights on the handle (its owner, a buggy retry loop)
    wrote an anomaly, an event and an audit entry on every call: at the per-caller
    rate, three rows a millisecond kept for the audit's retention. Each answer still
    names the anomaly; what is recorded is one per handle per minute, as for others."""
    owner = await server.client_for("service", "owner-svc")
    issued = await owner.handles.GenerateHandle(R.GenerateHandleRequest(type="workflow"))
    await owner.handles.RemoveHandle(R.RemoveHandleRequest(handle_id=issued.handle.id))

    def recorded(events: list[Event]) -> int:
        return sum(
            1
            for e in events
            if e.anomaly is not None
            and e.anomaly.kind is AnomalyKind.USE_AFTER_REVOCATION
            and e.subject_id == issued.handle.id
        )

    answers = await asyncio.gather(*(validate(owner, issued.token, {}) for _ in range(25)))
    for _ in range(5):
        answers.append(await validate(owner, issued.token, {}))

    assert all(a.reason == R.VALIDATION_REASON_REVOKED for a in answers)
    assert all(len(a.anomalies) == 1 for a in answers)  # the owner still sees it each time
    assert recorded(await server.events()) == 1
    await server.advance(timedelta(minutes=1))
    await validate(owner, issued.token, {})
    assert recorded(await server.events()) == 2
