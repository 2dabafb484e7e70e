"""Who is calling: a bearer access token, a client certificate (mutual TLS) that
--client-identities maps to a principal, or, on loopback development servers only,
nobody in particular (--insecure-no-auth)."""

from __future__ import annotations

import contextvars
import functools
from collections import OrderedDict
from typing import Any, Protocol, TypeAlias

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from keyturn_server.client_identities import CertificateNames, IdentityFile
from keyturn_server.domain.access import ANONYMOUS, Principal, Role
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


@functools.lru_cache(maxsize=4096)
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

    def certificate_names(self) -> CertificateNames | None:
        """The names of the verified client certificate; None without one."""


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

    def certificate_names(self) -> CertificateNames | None:
        auth = self._context.auth_context() or {}
        found = next(iter(auth.get("x509_pem_cert", ())), None)
        if not found:
            return None
        return certificate_names(found if isinstance(found, bytes) else str(found).encode())


class Authenticator:
    def __init__(
        self, tokens: AccessTokenService, insecure: bool, identities: IdentityFile | None = None
    ) -> None:
        self._tokens = tokens
        self._insecure = insecure
        self._identities = identities

    async def principal(self, caller: Caller, method: str) -> Principal:
        try:
            return self.identify(caller)
        except Unauthenticated as exc:
            await self.audit_failure(caller, method, exc)
            raise

    async def audit_failure(self, caller: Caller, method: str, exc: Unauthenticated) -> None:
        await self._tokens.audit_failure(caller.peer, method, exc.reason)

    def identify(self, caller: Caller, recheck: bool = False) -> Principal:
        """The caller's principal; raises Unauthenticated (not yet audited: the guard
        audits it, so that the call that succeeds awaits nothing here). ``recheck``: an
        open stream's periodic check, which a verdict up to a second old may answer
        (AccessTokenService.authenticate)."""
        peer = caller.peer
        header = caller.authorization
        if header:
            scheme, _, secret = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthenticated(
                    "authorization must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
                )
            return self._tokens.authenticate(secret.strip(), peer, recheck=recheck)
        names = caller.certificate_names()
        if names is not None:
            return self.certificate_principal(names, peer)
        if self._insecure:
            return Principal(ANONYMOUS, Role.ADMIN, "insecure", peer, may_grant=False)
        raise Unauthenticated(
            "missing credentials: send 'authorization: Bearer <token>'",
            reason="MISSING_CREDENTIALS",
        )

    def certificate_principal(self, names: CertificateNames, peer: str) -> Principal:
        """The principal a verified client certificate maps to (client_identities.py)."""
        if self._identities is None:
            raise Unauthenticated(
                "client certificates name no principal on this server (no "
                "--client-identities); send 'authorization: Bearer <token>'",
                reason="CLIENT_IDENTITIES_NOT_CONFIGURED",
            )
        return self._identities.current.principal(names, peer)


#: Certificates seen recently, parsed: a connection presents the same one on every call.
_PARSED: OrderedDict[bytes, CertificateNames] = OrderedDict()
_PARSED_MAX = 1024


def certificate_names(pem: bytes) -> CertificateNames:
    """The names in a verified client certificate (PEM), parsed once per certificate."""
    names = _PARSED.get(pem)
    if names is None:
        names = parse_certificate(pem)
        _PARSED[pem] = names
        if len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return names


def parse_certificate(pem: bytes) -> CertificateNames:
    certificate = x509.load_pem_x509_certificate(pem)
    uris: list[str] = []
    dns: list[str] = []
    try:
        alternatives = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        pass
    else:
        uris = alternatives.get_values_for_type(x509.UniformResourceIdentifier)
        dns = alternatives.get_values_for_type(x509.DNSName)
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = common[0].value if common else ""
    return CertificateNames(
        tuple(uris), tuple(dns), cn if isinstance(cn, str) else cn.decode(errors="replace")
    )
