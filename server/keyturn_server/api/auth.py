"""Who is calling: a bearer access token, a client certificate (mutual TLS), or, on
loopback development servers only, nobody in particular (--insecure-no-auth)."""

from __future__ import annotations

import contextvars
from typing import Any, TypeAlias

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


class Authenticator:
    def __init__(self, tokens: AccessTokenService, insecure: bool) -> None:
        self._tokens = tokens
        self._insecure = insecure

    async def principal(self, context: Context, method: str, peer: str) -> Principal:
        try:
            return self._identify(context, peer)
        except Unauthenticated as exc:
            await self._tokens.audit_failure(peer, method, exc.reason)
            raise

    def _identify(self, context: Context, peer: str) -> Principal:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else ""
                break
        if header:
            scheme, _, secret = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthenticated(
                    "authorization must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
                )
            return self._tokens.authenticate(secret.strip(), peer)
        identity = _certificate_identity(context)
        if identity:
            role = self._tokens.role_of(identity) or Role.SERVICE
            return Principal(identity, role, "mtls", peer)
        if self._insecure:
            return Principal("anonymous", Role.ADMIN, "insecure", peer, may_grant=False)
        raise Unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer <token>'",
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
