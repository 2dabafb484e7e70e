"""Hostile input: thousands of random and malformed requests to every RPC, raw bytes that
are not gRPC, oversized messages and invalid UTF-8. Every answer is a documented status
(never UNKNOWN or INTERNAL), rejected calls change nothing, and the server stays healthy.

The generated shapes include what an attacker crafts on purpose: page tokens with huge or
infinite numbers, deep nesting or forged cursors, timestamps and durations anywhere in
int64 (near 2^62 seconds too), and text with bidirectional overrides and C0/C1 controls.

KEYTURN_FUZZ_EXAMPLES sets the examples per RPC (default 80).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    handles_pb2,
    handles_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    resources_pb2,
)
from keyturn_server.domain import limits
from tests.process import ServerProcess

pytestmark = pytest.mark.sqlite_only
EXAMPLES = int(os.environ.get("KEYTURN_FUZZ_EXAMPLES", "80"))
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
}
#: A watch the fuzzer leaves open ends at its short deadline, or is cancelled by it.
STREAM_ENDINGS = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
SERVICES = [
    (keys_pb2.DESCRIPTOR.services_by_name["KeyService"], keys_pb2_grpc.KeyServiceStub),
    (handles_pb2.DESCRIPTOR.services_by_name["HandleService"], handles_pb2_grpc.HandleServiceStub),
    (admin_pb2.DESCRIPTOR.services_by_name["AdminService"], admin_pb2_grpc.AdminServiceStub),
]
METHODS = [(d, stub, m) for d, stub in SERVICES for m in d.methods]
MODULES = [keys_pb2, handles_pb2, admin_pb2, events_pb2]
F = pb_descriptor.FieldDescriptor


class Target:
    """One real server process for the module, with some real ids to aim at."""

    def __init__(self, data_dir: Path) -> None:
        self.process = ServerProcess(data_dir)
        self.channel: grpc.Channel
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.ids: list[str] = []
        self.tried = 0
        self.crafted = 0

    def start(self) -> None:
        self.process.spawn()
        deadline = time.monotonic() + 30
        while not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError("the fuzz target did not become healthy within 30 s")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(self.process.address)
        self.metadata = (("authorization", f"Bearer {self.process.token()}"),)
        keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        handles = handles_pb2_grpc.HandleServiceStub(self.channel)
        for kind in ("encryption", "signing", "session"):
            key = keys.GenerateKey(keys_pb2.GenerateKeyRequest(type=kind), metadata=self.metadata)
            self.ids.append(key.key.id)
        issued = handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session"), metadata=self.metadata
        )
        self.ids += [issued.handle.id, issued.token]

    def healthy(self) -> bool:
        try:
            with grpc.insecure_channel(self.process.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def audit_head(self) -> int:
        stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        page = stub.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=1, descending=True), metadata=self.metadata
        )
        return page.events[0].sequence if page.events else 0

    def audited_after(self, sequence: int) -> list[str]:
        """The actions audited after ``sequence``."""
        stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        page = stub.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=100, descending=True), metadata=self.metadata
        )
        return [e.action for e in page.events if e.sequence > sequence]


#: Audit actions a rejected call may leave behind (docs/security.md).
SECURITY_RECORDS = {"handle.anomaly", "handle.revoke"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    running = Target(tmp_path_factory.mktemp("fuzz") / "data")
    running.start()
    yield running
    running.channel.close()
    assert running.healthy(), "the server is not healthy after the fuzzing"
    assert running.process.terminate() == 0


def _message_class(descriptor: pb_descriptor.Descriptor) -> type[Message]:
    for module in MODULES:
        found = getattr(module, descriptor.name, None)
        if found is not None and found.DESCRIPTOR.full_name == descriptor.full_name:
            return found  # type: ignore[no-any-return]
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


#: Characters that hide or reorder text: bidi embeddings, overrides and isolates, C0 and
#: C1 controls, DEL, zero-width and BOM.
TRICKY = [
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9b",
    "\u200b",
    "\ufeff",
]


def _text(ids: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.integers(300, 5000).map(lambda n: "ж" * n),  # oversized, cheaply
        st.sampled_from([*ids, "", "admin", "encryption", "workflow", "key_aaaaaaaaaaaaaaaa"]),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
        st.text(alphabet=st.sampled_from([*TRICKY, *"ab.:/_-"]), max_size=40),
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: JSON values an unauthenticated decoder chokes on: numbers past every range, NaN and
#: infinities, nesting past the recursion limit, and the wrong types.
_HOSTILE_JSON = st.one_of(
    st.integers(-(2**200), 2**200).map(str),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "null", "true", '"x"', "[]"]),
    st.integers(1, 200_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 50_000).map(lambda depth: '{"t":' * depth + "0" + "}" * depth),
)


@st.composite
def page_tokens(draw: st.DrawFn) -> str:
    """What a caller may put in a page token: forged cursors of every shape, with and
    without a tag, and plain garbage."""
    value = draw(_HOSTILE_JSON)
    cursor = draw(
        st.sampled_from(
            [
                value,
                '{"t": ' + value + ', "i": "key_aaaaaaaaaaaaaaaa", "f": "0"}',
                '{"t": 0, "i": ' + value + ', "f": ' + value + "}",
                '{"s": ' + value + "}",
            ]
        )
    )
    payload = _b64(cursor.encode())
    return draw(
        st.one_of(
            st.just(payload),
            st.binary(max_size=32).map(lambda tag: f"{payload}.{_b64(tag)}"),
            st.text(max_size=64),
            st.integers(513, 5000).map(lambda n: "A" * n),
        )
    )


#: int64 seconds, weighted towards the edges a datetime cannot hold.
_SECONDS = st.one_of(
    st.integers(-(10**10), 10**11),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**62, -(2**62), 10**15, -(10**15), 253_402_300_800, 315_576_000_001]),
)
_NANOS = st.integers(-(2**31), 2**31 - 1)


def _scalar(field: F, ids: list[str]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == F.TYPE_STRING:
        return _text(ids)
    if kind == F.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64), st.integers(60_000, 70_000).map(lambda n: b"\x5a" * n)
        )
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 1000)
        )
    if kind in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if kind in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    if kind in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.floats(allow_nan=True)


@st.composite
def messages(
    draw: st.DrawFn, descriptor: pb_descriptor.Descriptor, ids: list[str], depth: int = 0
) -> Message:
    message = _message_class(descriptor)()
    for field in descriptor.fields:
        if draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                if depth < 2:
                    for key in draw(st.lists(_text(ids), max_size=3)):
                        getattr(message, field.name)[key].CopyFrom(
                            draw(messages(value_field.message_type, ids, depth + 1))
                        )
                continue
            entries = draw(st.dictionaries(_text(ids), _text(ids), max_size=40))
            getattr(message, field.name).update(entries)
        elif field.message_type is not None:
            if depth >= 2:
                continue
            if field.message_type.full_name in (
                "google.protobuf.Duration",
                "google.protobuf.Timestamp",
            ):
                getattr(message, field.name).seconds = draw(_SECONDS)
                if draw(st.booleans()):
                    getattr(message, field.name).nanos = draw(_NANOS)
            elif field.message_type.full_name == "google.protobuf.FieldMask":
                getattr(message, field.name).paths.extend(draw(st.lists(_text(ids), max_size=4)))
            elif field.is_repeated:
                for _ in range(draw(st.integers(0, 2))):
                    getattr(message, field.name).add().CopyFrom(
                        draw(messages(field.message_type, ids, depth + 1))
                    )
            else:
                getattr(message, field.name).CopyFrom(
                    draw(messages(field.message_type, ids, depth + 1))
                )
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field, ids), max_size=5)))
        elif field.name == "page_token":
            setattr(message, field.name, draw(page_tokens()))
        else:
            setattr(message, field.name, draw(_scalar(field, ids)))
    return message


def _call(target: Target, stub_class: Any, method: Any, request: Message) -> grpc.StatusCode:
    stub = stub_class(target.channel)
    call = getattr(stub, method.name)
    try:
        if method.server_streaming:
            stream = call(request, metadata=target.metadata, timeout=0.5)
            try:
                for _ in range(3):
                    next(stream)
            except StopIteration:
                pass
            finally:
                stream.cancel()
        else:
            call(request, metadata=target.metadata, timeout=10)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        return grpc.StatusCode.OK if method.server_streaming and code in STREAM_ENDINGS else code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("service", "stub_class", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, _, m in METHODS]
)
def test_random_requests_get_documented_statuses_and_rejections_change_nothing(
    target: Target,
    service: Any,
    stub_class: Any,
    method: Any,
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=messages(method.input_type, target.ids))
    def run(request: Message) -> None:
        if method.name == "RevokeAccessToken" and getattr(request, "name", "") == "admin":
            return  # the fuzzer's own credentials
        before = target.audit_head()
        code = _call(target, stub_class, method, request)
        target.tried += 1
        assert code in DOCUMENTED, f"{method.name} answered {code.name}"
        if code is not grpc.StatusCode.OK:
            # Only what a refusal must record stays: a security anomaly (a drift, a flood
            # of refused tokens), and a revocation the policy ties to it.
            changed = set(target.audited_after(before)) - SECURITY_RECORDS
            assert not changed, f"a rejected {method.name} changed the store: {changed}"

    run()
    assert target.healthy()


@st.composite
def crafted_requests(draw: st.DrawFn) -> tuple[str, Any, Message, set[grpc.StatusCode]]:
    """A request aimed at one of the parsers an attacker reaches on purpose, and the
    statuses it may get."""
    invalid = {grpc.StatusCode.INVALID_ARGUMENT}
    kind = draw(st.sampled_from(["page", "audit-time", "ttl", "config-duration"]))
    if kind == "page":
        token = draw(page_tokens())
        stub, method, request = draw(
            st.sampled_from(
                [
                    (keys_pb2_grpc.KeyServiceStub, "ListKeys", keys_pb2.ListKeysRequest()),
                    (
                        handles_pb2_grpc.HandleServiceStub,
                        "ListHandles",
                        handles_pb2.ListHandlesRequest(),
                    ),
                    (
                        admin_pb2_grpc.AdminServiceStub,
                        "ListAuditEvents",
                        admin_pb2.ListAuditEventsRequest(),
                    ),
                ]
            )
        )
        request.page_token = token
        return method, stub, request, invalid if token else {grpc.StatusCode.OK}
    if kind == "audit-time":
        request = admin_pb2.ListAuditEventsRequest(page_size=1)
        for name in draw(
            st.sampled_from([["start_time"], ["end_time"], ["start_time", "end_time"]])
        ):
            getattr(request, name).seconds = draw(_SECONDS)
            getattr(request, name).nanos = draw(st.one_of(st.just(0), _NANOS))
        return (
            "ListAuditEvents",
            admin_pb2_grpc.AdminServiceStub,
            request,
            invalid | {grpc.StatusCode.OK},
        )
    duration = {"seconds": draw(_SECONDS)}
    if kind == "ttl":
        request = admin_pb2.CreateAccessTokenRequest(
            name="fuzzed", role=resources_pb2.ROLE_AUDITOR, ttl=duration
        )
        done = {grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS}
        return "CreateAccessToken", admin_pb2_grpc.AdminServiceStub, request, invalid | done
    field = draw(st.sampled_from(["rotation_interval", "warning_threshold", "max_lifetime"]))
    fields: dict[str, Any] = {
        "algorithm": "sha256",
        "handle_length": 32,
        "rotation_interval": {"seconds": 60},
        "warning_threshold": {"seconds": 10},
        "max_lifetime": {"seconds": 120},
        "max_usage": 5,
        field: duration,
    }
    request = admin_pb2.UpdateConfigRequest(
        config=admin_pb2.Config(handle_types={"fuzzed": admin_pb2.HandleTypeConfig(**fields)}),
        update_mask={"paths": ["handle_types.fuzzed"]},
    )
    done = {grpc.StatusCode.OK}
    return "UpdateConfig", admin_pb2_grpc.AdminServiceStub, request, invalid | done


def test_crafted_page_tokens_times_and_durations_are_invalid_argument(target: Target) -> None:
    @settings(
        max_examples=EXAMPLES * 5,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(crafted=crafted_requests())
    def run(crafted: tuple[str, Any, Message, set[grpc.StatusCode]]) -> None:
        method, stub_class, request, allowed = crafted
        if request.ByteSize() > limits.MAX_REQUEST:  # refused by its length, unread
            allowed = {grpc.StatusCode.RESOURCE_EXHAUSTED}
        try:
            getattr(stub_class(target.channel), method)(
                request, metadata=target.metadata, timeout=10
            )
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
        target.crafted += 1
        assert code in allowed, f"{method} answered {code.name}"

    run()
    assert target.healthy()


def test_bytes_that_are_not_grpc_do_not_hurt_the_server(target: Target) -> None:
    host, port = target.process.address.rsplit(":", 1)
    payloads = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512),
        b"\x00" * 10_000,
    ]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(payload)
            raw.settimeout(2)
            with contextlib.suppress(TimeoutError, ConnectionError):
                raw.recv(1024)
    assert target.healthy()


def test_a_message_over_the_size_limit_is_refused(target: Target) -> None:
    stub = keys_pb2_grpc.KeyServiceStub(target.channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encrypt(
            keys_pb2.EncryptRequest(key_id=target.ids[0], plaintext=b"x" * 2_000_000),
            metadata=target.metadata,
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert target.healthy()


def test_invalid_utf8_in_a_string_field_is_invalid_argument(target: Target) -> None:
    get_key = target.channel.unary_unary("/keyturn.v1.KeyService/GetKey")
    bad_string = b"\x0a\x04\xff\xfe\xfd\xfc"  # field 1 (key_id), 4 bytes, not UTF-8
    with pytest.raises(grpc.RpcError) as raised:
        get_key(bad_string, metadata=target.metadata, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_invalid_utf8_in_metadata_is_refused_cleanly(target: Target) -> None:
    """Hand-made HTTP/2 (grpc clients will not send such headers)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = target.process.address.rsplit(":", 1)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", host.encode()),
            (b":path", b"/keyturn.v1.KeyService/ListKeys"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"authorization", b"Bearer \xff\xfe\xc3\x28"),
            (b"x-note", b"\x80\x81\x82"),
        ],
    )
    conn.send_data(stream, b"\x00\x00\x00\x00\x00", end_stream=True)
    status = None
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(conn.data_to_send())
        deadline = time.monotonic() + 5
        while status is None and time.monotonic() < deadline:
            data = raw.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers = dict(event.headers)
                    status = headers.get(b"grpc-status", status)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    status = b"reset"
            raw.sendall(conn.data_to_send())
    assert status in (b"16", b"3", b"reset"), status  # UNAUTHENTICATED, INVALID_ARGUMENT
    assert target.healthy()


def test_the_server_is_healthy_after_the_fuzzing(
    target: Target, record_property: Callable[[str, object], None]
) -> None:
    """Runs last in this module: the figures of the whole fuzzing."""
    assert target.healthy()
    assert target.process.process is not None and target.process.process.poll() is None
    record_property(
        "figures",
        f"fuzz: {target.tried} random requests to {len(METHODS)} RPCs and {target.crafted} "
        "crafted ones (forged page tokens, times and durations past every range), plus raw "
        "bytes, an oversized message and invalid UTF-8: 0 undocumented statuses (no INTERNAL "
        "or UNKNOWN), the server healthy",
    )
