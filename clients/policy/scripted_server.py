"""A gRPC server that answers from the shared table of client-policy cases, so that every
client's tests (Python, Node, Go, Java) run the same cases over real channels.

A test names its case in the bearer token: ``call-<index>~<run>`` or ``watch-<index>~<run>``
(the index of the case in ``cases.json``, and anything unique per run). Each attempt of a
call, or each stream of a watch, gets the next scripted answer of that run (an answer with
``"times": N`` stands for N such answers in a row; a stream with ``"silent_ms"`` stays
open that long, sending nothing, before it ends). What the server
saw of a run is served as JSON at ``GET <control>/runs/<token>``: the attempts, the waits
between them, the deadline each attempt carried, the resume point of each stream, and
whether it came over TLS. Tests compare that with the case's ``expect``.

    python clients/policy/scripted_server.py [--cases FILE] [--env-file FILE]

When it listens it writes (to stdout, and to ``--env-file``) the variables the tests read:
KEYTURN_POLICY_ADDRESS (plaintext), KEYTURN_POLICY_TLS_ADDRESS and KEYTURN_POLICY_CA (TLS
for the name ``keyturn.test`` under a CA made at start), KEYTURN_POLICY_CONTROL and
KEYTURN_POLICY_CASES.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from keyturn.v1 import events_pb2

CASES = Path(__file__).with_name("cases.json")
TLS_NAME = "keyturn.test"


@dataclass
class Attempt:
    """One call attempt, or one watch stream, as the server saw it."""

    method: str
    arrived: float
    remaining: float | None
    tls: bool
    resume_after: int | None = None
    answered: float | None = None


@dataclass
class Run:
    case: str
    attempts: list[Attempt] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        attempts = self.attempts
        waits = [
            round((later.arrived - (earlier.answered or later.arrived)) * 1000, 1)
            for earlier, later in itertools.pairwise(attempts)
        ]
        deadlines = [a.arrived + a.remaining for a in attempts if a.remaining is not None]
        drift = None
        if deadlines and len(deadlines) == len(attempts):
            drift = round(max(abs(d - deadlines[0]) for d in deadlines) * 1000, 1)
        return {
            "case": self.case,
            "attempts": len(attempts),
            "methods": [a.method for a in attempts],
            "waits_ms": waits,
            "granted_ms": [
                None if a.remaining is None else round(a.remaining * 1000, 1) for a in attempts
            ],
            "deadline_drift_ms": drift,
            "resume_after": [a.resume_after for a in attempts],
            "tls": [a.tls for a in attempts],
        }


class Script:
    """The cases, and the runs seen so far (read by the control thread too)."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.calls: list[dict[str, Any]] = [
            {**case, "answers": [a for a in case["answers"] for _ in range(a.get("times", 1))]}
            for case in table["calls"]
        ]
        self.watches: list[dict[str, Any]] = table["watches"]
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def case(self, token: str) -> tuple[str, dict[str, Any]] | None:
        name = token.split("~", 1)[0]
        kind, _, index = name.partition("-")
        cases = {"call": self.calls, "watch": self.watches}.get(kind)
        if cases is None or not index.isdigit() or int(index) >= len(cases):
            return None
        return name, cases[int(index)]

    def begin(self, token: str, name: str, attempt: Attempt) -> int:
        """Records an attempt of the run; returns its index (0 for the first)."""
        with self._lock:
            run = self._runs.setdefault(token, Run(name))
            run.attempts.append(attempt)
            return len(run.attempts) - 1

    def summary(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            run = self._runs.get(token)
            return None if run is None else run.summary()


def token_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ")
    return ""


def over_tls(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return context.auth_context().get("transport_security_type") == [b"ssl"]


async def end_with(context: grpc.aio.ServicerContext[Any, Any], answer: dict[str, Any]) -> None:
    """Ends the call with the answer's status (and RetryInfo when it has a delay)."""
    code = grpc.StatusCode[answer["code"]]
    message = f"scripted {answer['code']}"
    trailer: tuple[tuple[str, str | bytes], ...] = ()
    if "retry_delay_ms" in answer:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(answer["retry_delay_ms"])
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        trailer = (("grpc-status-details-bin", status.SerializeToString()),)
    await context.abort(code, message, trailer)


class ScriptedService(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Answers every keyturn.v1 method: unary ones with an empty message or a scripted
    status, WatchExpiring with scripted streams."""

    def __init__(self, script: Script) -> None:
        self.script = script

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = str(handler_call_details.method)
        if not method.startswith("/keyturn.v1."):
            return None
        # grpc.aio tells coroutine handlers from others by their function: no lambdas.
        if method.endswith("/WatchExpiring"):

            async def stream(
                request: events_pb2.WatchExpiringRequest,
                context: grpc.aio.ServicerContext[Any, Any],
            ) -> AsyncIterator[bytes]:
                async for message in self.stream(method, request, context):
                    yield message

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=events_pb2.WatchExpiringRequest.FromString
            )

        async def unary(_: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return await self.unary(method, context)

        return grpc.unary_unary_rpc_method_handler(unary)

    def _attempt(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        resume_after: int | None = None,
    ) -> Attempt:
        return Attempt(
            method=method.lstrip("/"),
            arrived=time.monotonic(),
            remaining=context.time_remaining(),
            tls=over_tls(context),
            resume_after=resume_after,
        )

    async def unary(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        token = token_of(context)
        found = self.script.case(token)
        if found is None or not found[0].startswith("call-"):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no call case for {token!r}")
        assert found is not None
        name, case = found
        attempt = self._attempt(method, context)
        index = self.script.begin(token, name, attempt)
        try:
            if method.lstrip("/") != case["method"]:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{name} is for {case['method']}"
                )
            if index >= len(case["answers"]):
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "script exhausted")
            answer = case["answers"][index]
            if "hang_ms" in answer:
                await asyncio.sleep(answer["hang_ms"] / 1000)
            elif answer["code"] != "OK":
                attempt.answered = time.monotonic()
                await end_with(context, answer)
            return b""  # an empty message parses as any response type
        finally:
            attempt.answered = attempt.answered or time.monotonic()

    async def stream(
        self,
        method: str,
        request: events_pb2.WatchExpiringRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        token = token_of(context)
        found = self.script.case(token)
        if found is None or not found[0].startswith("watch-"):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no watch case for {token!r}")
        assert found is not None
        name, case = found
        resume = request.resume_after if request.HasField("resume_after") else None
        attempt = self._attempt(method, context, resume)
        index = self.script.begin(token, name, attempt)
        try:
            if index >= len(case["connections"]):
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "script exhausted")
            connection = case["connections"][index]
            for notation in connection["events"]:
                yield event(notation).SerializeToString()
            if "silent_ms" in connection:
                # A stuck server: the stream stays open and the connection answers pings
                # (the C core does), but nothing more comes, until the client gives up.
                await asyncio.sleep(connection["silent_ms"] / 1000)
            if connection["end"]["code"] != "OK":
                # Noted before the status leaves: the client's wait starts when it gets it,
                # and a busy loop may run this frame again only after its next attempt.
                attempt.answered = time.monotonic()
                await end_with(context, connection["end"])
        finally:
            attempt.answered = attempt.answered or time.monotonic()


def event(notation: str) -> events_pb2.ExpiryEvent:
    """The event a table names: "snapshot", "complete@10", "heartbeat@20" or "11"; a
    marker's "/100" says that heartbeats come every 100 ms (heartbeat_interval)."""
    if notation == "snapshot":
        return events_pb2.ExpiryEvent(kind=events_pb2.EVENT_KIND_EXPIRING, snapshot=True)
    marker, _, every_ms = notation.partition("/")
    kind, _, latest = marker.partition("@")
    markers = {
        "complete": events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE,
        "heartbeat": events_pb2.EVENT_KIND_HEARTBEAT,
    }
    if kind in markers:
        message = events_pb2.ExpiryEvent(kind=markers[kind], latest_sequence=int(latest))
        if every_ms:
            message.heartbeat_interval.FromMilliseconds(int(every_ms))
        return message
    return events_pb2.ExpiryEvent(kind=events_pb2.EVENT_KIND_CREATED, sequence=int(notation))


def certificate_authority() -> tuple[bytes, bytes, bytes]:
    """A CA made for this run and a server certificate for TLS_NAME it signed:
    (CA PEM, server certificate PEM, server key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyturn policy test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def control_server(script: Script) -> ThreadingHTTPServer:
    """``GET /runs/<token>``: what the server saw of that run, as JSON."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = self.path.removeprefix("/runs/")
            found = script.summary(token) if self.path.startswith("/runs/") else None
            body = json.dumps(found if found is not None else {"error": "no such run"})
            self.send_response(200 if found is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests print what matters

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def serve(table: dict[str, Any], cases: Path, env_file: Path | None) -> None:
    script = Script(table)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([ScriptedService(script)])
    port = server.add_insecure_port("127.0.0.1:0")
    ca_pem, cert_pem, key_pem = certificate_authority()
    tls_port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)])
    )
    ca_file = Path(tempfile.mkdtemp(prefix="keyturn-policy-")) / "ca.pem"
    ca_file.write_bytes(ca_pem)
    control = control_server(script)
    await server.start()
    stop = lambda: asyncio.ensure_future(server.stop(None))  # noqa: E731
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    variables = {
        "KEYTURN_POLICY_ADDRESS": f"127.0.0.1:{port}",
        "KEYTURN_POLICY_TLS_ADDRESS": f"127.0.0.1:{tls_port}",
        "KEYTURN_POLICY_CA": str(ca_file),
        "KEYTURN_POLICY_CONTROL": f"http://127.0.0.1:{control.server_address[1]}",
        "KEYTURN_POLICY_CASES": str(cases),
    }
    lines = "".join(f"{name}={value}\n" for name, value in variables.items())
    print(lines, end="", flush=True)
    if env_file is not None:
        partial = env_file.with_name(env_file.name + ".partial")
        partial.write_text(lines)
        partial.replace(env_file)  # readers never see half a file
    try:
        await server.wait_for_termination()
    finally:
        control.shutdown()
        ca_file.unlink(missing_ok=True)
        ca_file.parent.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, default=CASES)
    parser.add_argument("--env-file", type=Path)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(json.loads(args.cases.read_text()), args.cases.resolve(), args.env_file))


if __name__ == "__main__":
    main()
