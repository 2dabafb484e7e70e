"""Which principal a client certificate is: explicit configuration, as Vault's cert auth
method and SPIRE's registration entries do it, never a name matched to something else.

Under mutual TLS (--client-ca) the CA vouches for the names in a certificate, not for what
they may do here. ``--client-identities FILE`` (TOML) maps a certificate's URI SAN (a
SPIFFE id, typically), DNS SAN or subject CN to a principal name and a role::

    # Certificates no entry names are refused, unless a default role is given:
    # default_role = "service"    # the principal is then "uri:...", "dns:..." or "cn:..."

    [[identity]]
    name = "billing"                                  # the principal: owns keys, handles
    role = "service"                                  # admin, operator, service, auditor
    uri = "spiffe://prod.example/ns/billing/sa/api"   # exactly one of uri, dns, cn

    [[identity]]
    name = "batch"
    role = "service"
    dns = "*.batch.example"     # '*' stands for one DNS label, or one URI path segment
    revoked = true              # its certificates are refused, even with a default role

Entries are tried in file order and the first that matches decides. The file is checked
whole at start (an error ends the start with one line naming the entry) and read again
when it changes, so an edit (a revocation) takes effect within seconds; an edit that does
not parse is logged and the previous mapping stays. Principals named by a default role
carry a "kind:" prefix, which no access token name can have, so that a certificate can
never pass for a token's principal (``CN=admin`` is not the admin).
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyturn_server.domain.access import MAX_PRINCIPAL, Principal, Role
from keyturn_server.domain.access_tokens import NAME, RESERVED_NAMES
from keyturn_server.domain.errors import Unauthenticated
from keyturn_server.domain.limits import clip

log = logging.getLogger("keyturn.security")


class ClientIdentitiesError(ValueError):
    """The identities file cannot be used; the message names the file and the entry."""


class NameKind(enum.Enum):
    URI = "uri"
    DNS = "dns"
    CN = "cn"


@dataclass(frozen=True)
class CertificateNames:
    """The names a verified client certificate carries."""

    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    common_name: str = ""

    def of(self, kind: NameKind) -> tuple[str, ...]:
        if kind is NameKind.URI:
            return self.uris
        if kind is NameKind.DNS:
            return self.dns
        return (self.common_name,) if self.common_name else ()

    def most_specific(self) -> tuple[NameKind, str] | None:
        for kind in NameKind:
            found = self.of(kind)
            if found:
                return kind, found[0]
        return None

    def describe(self) -> str:
        parts = [f"{k.value} {clip(v)}" for k in NameKind for v in self.of(k)]
        return ", ".join(parts[:4]) or "no names"


@functools.lru_cache(maxsize=1024)
def _compile(kind: NameKind, pattern: str) -> re.Pattern[str]:
    """Exact, but for '*': one URI path segment, one DNS label, or anything in a CN
    (never nothing)."""
    within = {NameKind.URI: "[^/]+", NameKind.DNS: "[^.]+", NameKind.CN: ".+"}[kind]
    return re.compile(within.join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclass(frozen=True)
class ClientIdentity:
    name: str
    role: Role
    kind: NameKind
    pattern: str
    revoked: bool = False

    def matches(self, names: CertificateNames) -> bool:
        compiled = _compile(self.kind, self.pattern)
        return any(compiled.fullmatch(value) for value in names.of(self.kind))


@dataclass(frozen=True)
class ClientIdentities:
    identities: tuple[ClientIdentity, ...] = ()
    default_role: Role | None = None

    def principal(self, names: CertificateNames, peer: str) -> Principal:
        """The principal a certificate maps to; UNAUTHENTICATED when it maps to none."""
        for identity in self.identities:
            if identity.matches(names):
                if identity.revoked:
                    raise Unauthenticated(
                        f"the client certificate's principal {identity.name!r} is revoked",
                        reason="CLIENT_CERTIFICATE_REVOKED",
                    )
                return Principal(identity.name, identity.role, "mtls", peer)
        named = names.most_specific()
        if self.default_role is None or named is None:
            raise Unauthenticated(
                f"the client certificate ({names.describe()}) names no principal in "
                "--client-identities; add an entry for it, or send a bearer token",
                reason="UNKNOWN_CLIENT_CERTIFICATE",
            )
        kind, value = named
        name = f"{kind.value}:{value}"
        if len(name) > MAX_PRINCIPAL:
            raise Unauthenticated(
                f"the client certificate's {kind.value} name is longer than "
                f"{MAX_PRINCIPAL - len(kind.value) - 1} characters ({clip(value)}); map it "
                "to a principal in --client-identities",
                reason="CLIENT_CERTIFICATE_NAME_TOO_LONG",
            )
        return Principal(name, self.default_role, "mtls", peer)


def _role(value: Any, where: str) -> Role:
    if not isinstance(value, str) or value.upper() not in Role.__members__:
        raise ClientIdentitiesError(
            f"{where}: role must be one of admin, operator, service, auditor (got {value!r})"
        )
    return Role[value.upper()]


_ENTRY_KEYS = {"name", "role", "uri", "dns", "cn", "revoked"}


def _identity(raw: Any, where: str) -> ClientIdentity:
    if not isinstance(raw, dict):
        raise ClientIdentitiesError(f"{where}: must be a table ([[identity]])")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise ClientIdentitiesError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ClientIdentitiesError(
            f"{where}: name must be 1-64 of a-z, 0-9, '.', '_' and '-', starting with a "
            f"letter or digit (got {name!r})"
        )
    if name in RESERVED_NAMES:  # entries name principals in the token names' namespace
        raise ClientIdentitiesError(
            f"{where}: name {name!r} is reserved: the server audits its own work or "
            "anonymous development callers under it"
        )
    given = [(kind, raw[kind.value]) for kind in NameKind if kind.value in raw]
    if len(given) != 1:
        raise ClientIdentitiesError(f"{where} ({name}): give exactly one of uri, dns or cn")
    kind, pattern = given[0]
    if not isinstance(pattern, str) or not pattern.strip() or pattern.strip("*") == "":
        raise ClientIdentitiesError(
            f"{where} ({name}): {kind.value} must be a name (a '*' alone would match anything)"
        )
    revoked = raw.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ClientIdentitiesError(f"{where} ({name}): revoked must be true or false")
    return ClientIdentity(name, _role(raw.get("role"), f"{where} ({name})"), kind, pattern, revoked)


def parse(text: str, source: str) -> ClientIdentities:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientIdentitiesError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"identity", "default_role"})
    if unknown:
        raise ClientIdentitiesError(
            f"{source}: unknown key {unknown[0]!r} (known: default_role, [[identity]])"
        )
    entries = data.get("identity", [])
    if not isinstance(entries, list):
        raise ClientIdentitiesError(f"{source}: identity must be an array of tables")
    identities = tuple(
        _identity(raw, f"{source}: identity {i + 1}") for i, raw in enumerate(entries)
    )
    roles: dict[str, Role] = {}
    for identity in identities:
        if roles.setdefault(identity.name, identity.role) is not identity.role:
            raise ClientIdentitiesError(f"{source}: principal {identity.name!r} is given two roles")
    default = data.get("default_role")
    return ClientIdentities(
        identities, None if default is None else _role(default, f"{source}: default_role")
    )


class IdentityFile:
    """The mapping from a file, read again when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self.current = self._load()

    def _stat(self) -> tuple[int, int]:
        try:
            info = self.path.stat()
        except OSError as exc:
            raise ClientIdentitiesError(f"{self.path}: cannot be read ({exc.strerror})") from None
        return info.st_mtime_ns, info.st_size

    def _load(self) -> ClientIdentities:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientIdentitiesError(f"{self.path}: cannot be read ({exc})") from None
        return parse(text, str(self.path))

    def refresh(self) -> bool:
        """Read the file again if it changed; True when a new mapping is in force."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self.current = self._load()
        except ClientIdentitiesError as exc:
            log.error(
                "the client identities file was changed but cannot be used; the previous "
                "mapping stays in force",
                extra={"category": "security", "problem": str(exc)},
            )
            return False
        log.warning(
            "client identities reloaded",
            extra={"category": "security", "identities": len(self.current.identities)},
        )
        return True
