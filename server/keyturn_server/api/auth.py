"""Who is calling: a bearer access token, a client certificate (mutual TLS), or, on
loopback development servers only, nobody in particular (--insecure-no-auth)."""

from __future__ import annotations

import contextvars
from typing import Any, Protocol, TypeAlias

import grpc

from keyturn_server.domain.access import Principal, Role
from keyturn_server.domain.access_token_service import AccessTokenService
from keyturn_server.domain.errors import Internal, Unauthenticated

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("keyturn_principal")


def current() -> Principal:
    """The authenticated caller of the RPC being served."""
    try:
        return _PRINCIPAL.get()
    except LookupError:
        raise Internal("no principal in context") from None


def bind(principal: Principal) -> None:
    """Make ``principal`` the caller for the rest of this RPC's task."""
    _PRINCIPAL.set(principal)


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' -> '127.0.0.1'; '[::1]' kept bracket-free."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0]
        return host.strip("[]").replace("%5B", "").replace("%5D", "")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer


class Caller(Protocol):
    """The other end of one call, as its transport (gRPC or HTTP) saw it."""

    @property
    def peer(self) -> str:
        """The peer's host."""

    @property
    def authorization(self) -> str:
        """The ``authorization`` metadata or header; "" when absent."""

    def certificate_identity(self) -> str:
        """The verified client certificate's URI SAN, DNS SAN or CN; "" without one."""


class GrpcCaller:
    """The caller of a gRPC call. The peer is read at once: once the caller has gone,
    asking the call for it crashes grpc."""

    __slots__ = ("_context", "peer")

    def __init__(self, context: Context) -> None:
        self._context = context
        self.peer = peer_host(context.peer() or "")

    @property
    def authorization(self) -> str:
        for key, value in self._context.invocation_metadata() or ():
            if key == "authorization":
                return value if isinstance(value, str) else ""
        return ""

    def certificate_identity(self) -> str:
        return _certificate_identity(self._context)


class Authenticator:
    def __init__(self, tokens: AccessTokenService, insecure: bool) -> None:
        self._tokens = tokens
        self._insecure = insecure

    async def principal(self, caller: Caller, method: str) -> Principal:
        try:
            return self._identify(caller)
        except Unauthenticated as exc:
            await self._tokens.audit_failure(caller.peer, method, exc.reason)
            raise

    def _identify(self, caller: Caller) -> Principal:
        peer = caller.peer
        header = caller.authorization
        if header:
            scheme, _, secret = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthenticated(
                    "authorization must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
                )
            return self._tokens.authenticate(secret.strip(), peer)
        identity = caller.certificate_identity()
        if identity:
            role = self._tokens.role_of(identity) or Role.SERVICE
            return Principal(identity, role, "mtls", peer)
        if self._insecure:
            return Principal("anonymous", Role.ADMIN, "insecure", peer)
        raise Unauthenticated(
            "missing credentials: send 'authorization: Bearer <token>'",
            reason="MISSING_CREDENTIALS",
        )


def _certificate_identity(context: Context) -> str:
    """The verified client certificate's URI SAN (e.g. a SPIFFE id), DNS SAN or CN."""
    auth = context.auth_context() or {}
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        for value in auth.get(key, ()):
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if text:
                return text
    return ""
