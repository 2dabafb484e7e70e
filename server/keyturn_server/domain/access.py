"""Who may do what: principals, roles, permissions, and ownership.

A principal is the authenticated caller (an access token's name, or a client
certificate's identity). ``user_id`` in requests is only recorded as "on behalf of".
Callers without rights on someone else's key or handle get NOT_FOUND, not
PERMISSION_DENIED, so that ids of other tenants cannot be probed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from keyturn_server.domain.errors import NotFound, PermissionDenied


class Role(enum.Enum):
    ADMIN = "ADMIN"
    OPERATOR = "OPERATOR"
    SERVICE = "SERVICE"
    AUDITOR = "AUDITOR"


class Permission(enum.Enum):
    KEY_CREATE = "key.create"
    KEY_READ = "key.read"
    KEY_MANAGE = "key.manage"  # rotate, remove, restore
    KEY_USE = "key.use"  # encrypt, decrypt, sign, verify, mac
    KEY_EXPORT = "key.export"
    HANDLE_CREATE = "handle.create"
    HANDLE_READ = "handle.read"
    HANDLE_MANAGE = "handle.manage"  # rotate, remove
    HANDLE_VALIDATE = "handle.validate"
    STATS_READ = "stats.read"
    HEALTH_READ = "health.read"
    WATCH = "watch"
    CONFIG_READ = "config.read"
    CONFIG_WRITE = "config.write"
    AUDIT_READ = "audit.read"
    TOKEN_MANAGE = "token.manage"
    #: What failed inside, as the database said it (its host, port, user, file paths), in
    #: errors and health reasons: the people who run the service, not its tenants.
    DIAGNOSTICS_READ = "diagnostics.read"


_READ = {
    Permission.KEY_READ,
    Permission.HANDLE_READ,
    Permission.STATS_READ,
    Permission.HEALTH_READ,
    Permission.WATCH,
    Permission.CONFIG_READ,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(set(Permission) - {Permission.CONFIG_WRITE, Permission.TOKEN_MANAGE}),
    Role.SERVICE: frozenset(
        _READ
        | {
            Permission.KEY_CREATE,
            Permission.KEY_MANAGE,
            Permission.KEY_USE,
            Permission.KEY_EXPORT,
            Permission.HANDLE_CREATE,
            Permission.HANDLE_MANAGE,
            Permission.HANDLE_VALIDATE,
        }
    ),
    Role.AUDITOR: frozenset(_READ | {Permission.AUDIT_READ}),
}

#: The longest principal name: a certificate's SPIFFE ID (at most 2048 bytes, ASCII) under
#: its "uri:" prefix. Filters by owner or principal take names this long, and a
#: certificate that would name a longer one is refused, so every owner can be named.
MAX_PRINCIPAL = len("uri:") + 2048

#: Roles that act on every key and handle, not only their own.
_ALL_RESOURCES = {Role.ADMIN, Role.OPERATOR, Role.AUDITOR}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    #: How the caller proved who it is: "token", "mtls", "insecure", "system".
    via: str = "token"
    peer: str = ""
    #: May create or revoke credentials that outlive its call (access tokens). Not the
    #: anonymous caller of --insecure-no-auth: it would mint admin tokens that keep
    #: working once the server runs with authentication again.
    may_grant: bool = True

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def require(self, permission: Permission) -> None:
        if not self.may(permission):
            raise PermissionDenied(
                f"role {self.role.value.lower()} may not {permission.value}",
                reason="ROLE_NOT_ALLOWED",
                metadata={"permission": permission.value, "role": self.role.value},
            )

    def require_grant(self) -> None:
        """Creating or revoking a credential: refused to a caller that may not grant."""
        self.require(Permission.TOKEN_MANAGE)
        if not self.may_grant:
            raise PermissionDenied(
                "access tokens cannot be created or revoked under --insecure-no-auth: the "
                "anonymous caller would mint credentials that outlive this development "
                "server; run with authentication and use the admin token, or "
                "'keyturn token create' on the data directory",
                reason="INSECURE_NO_AUTH",
                metadata={"permission": Permission.TOKEN_MANAGE.value},
            )

    def operates(self) -> bool:
        """Operator or admin: acts on every key and handle, not as their owner."""
        return self.role in (Role.ADMIN, Role.OPERATOR)

    def sees_all(self) -> bool:
        return self.role in _ALL_RESOURCES

    def has_rights_on(self, owner: str) -> bool:
        """Owner, operator or admin: may see details and manage."""
        return self.role in (Role.ADMIN, Role.OPERATOR) or self.name == owner

    def require_visible(self, kind: str, resource_id: str, owner: str) -> None:
        if not (self.sees_all() or self.name == owner):
            raise NotFound(f"{kind} {resource_id!r} not found", reason=f"{kind.upper()}_NOT_FOUND")

    def owner_filter(self, requested: str) -> str | None:
        """The owner a listing or a watch is filtered by: what was asked for, for callers
        that see every resource; for the others their own name, or None when they asked
        for another owner's, of which they may see nothing (an empty answer, the same
        whoever that owner is). Their own used to be answered instead, under the other
        owner's name: a script that removed "bob's" handles removed its own."""
        if self.sees_all():
            return requested
        return self.name if requested in ("", self.name) else None


#: The scheduler and other work the server does on its own.
SYSTEM = Principal("keyturn", Role.ADMIN, via="system")
#: Who a caller without credentials is under --insecure-no-auth.
ANONYMOUS = "anonymous"
