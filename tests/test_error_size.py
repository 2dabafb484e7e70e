"""An error's status fits in gRPC's trailers, however many mistakes a request holds.

Before, an UpdateConfig with hundreds of bad mask paths or types, or an 8,000-character
etag echoed into its ABORTED message, made trailers past the client's 16 KiB limit: the
caller got RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of
what was wrong (found by an attack pass).
"""

from __future__ import annotations

import grpc

from keyturn.v1 import admin_pb2
from keyturn_server.api.status import STATUS_BUDGET, status_of
from keyturn_server.domain.errors import Aborted, FieldViolation, InvalidArgument
from tests.harness import Harness, fails

POLICY = admin_pb2.Config(security_policies=admin_pb2.SecurityPolicies(track_usage=True))


async def update(server: Harness, **fields: object) -> None:
    await server.admin.admin.UpdateConfig(admin_pb2.UpdateConfigRequest(**fields))  # type: ignore[arg-type]


async def test_hundreds_of_bad_mask_paths_are_invalid_argument_with_the_first_named(
    server: Harness,
) -> None:
    paths = [f"no_such_field_{i}" for i in range(600)]

    failure = await fails(update(server, config=POLICY, update_mask={"paths": paths}))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "(and 599 more)" in failure.message
    assert 0 < len(failure.violations) < 600 and "update_mask" in failure.violations


async def test_hundreds_of_bad_types_are_invalid_argument(server: Harness) -> None:
    types = {f"t{i}": admin_pb2.KeyTypeConfig(algorithm="nope", key_length=0) for i in range(200)}

    failure = await fails(update(server, config=admin_pb2.Config(key_types=types)))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_etag_longer_than_any_issued_is_refused_and_a_stale_one_is_aborted(
    server: Harness,
) -> None:
    mask = {"paths": ["security_policies.track_usage"]}

    long = await fails(update(server, config=POLICY, update_mask=mask, etag="x" * 8000))
    stale = await fails(update(server, config=POLICY, update_mask=mask, etag="x" * 128))

    assert long.code == grpc.StatusCode.INVALID_ARGUMENT and "etag" in long.violations
    assert stale.code == grpc.StatusCode.ABORTED and stale.reason == "ETAG_MISMATCH"


def test_every_status_fits_its_budget_and_keeps_what_fits() -> None:
    huge = "é" * 50_000
    many = [FieldViolation(f"config.key_types.t{i}.{huge}", huge) for i in range(1000)]
    statuses = [
        status_of(InvalidArgument.of(many)),
        status_of(Aborted(huge, metadata={f"m{i}": huge for i in range(4)})),
    ]

    assert all(s.ByteSize() <= STATUS_BUDGET + 200 for s in statuses)
    assert all(len(s.message.encode()) <= 1010 for s in statuses)
    kept = status_of(InvalidArgument.of(many[:3]))
    assert len(kept.details) == 2 and kept.ByteSize() <= STATUS_BUDGET + 200
