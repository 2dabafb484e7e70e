"""API access tokens: authentication of callers, and their management by admins.

Tokens are random secrets in the same recognisable format as handle tokens (type
``api-access``); the store keeps only a keyed digest. On first start the server creates
an ``admin`` token and writes it to DATA_DIR/admin.token (0600), like Vault's root token.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from keyturn_server.clock import Clock
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.domain import limits, tokens
from keyturn_server.domain.access import SYSTEM, Permission, Principal, Role
from keyturn_server.domain.access_tokens import NAME, RESERVED_NAMES, AccessToken
from keyturn_server.domain.anomalies import InvalidTokenFloodDetector
from keyturn_server.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    KeyturnError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.presenters import presenter_peer
from keyturn_server.domain.repositories import Repository, Store

TOKEN_BYTES = 32
#: Refusals of a read by a database that is there (a table or row locked, a statement
#: too slow): it may have revoked a token meanwhile, through another replica, so a verdict
#: cached before is not used. Replicas used to honour a token revoked elsewhere, at any
#: age, on every call that wrote without reading, for as long as the token table was
#: locked (a VACUUM FULL, a migration's ALTER TABLE).
_STORE_ANSWERS = frozenset({"STORE_LOCKED", "STORE_ROW_LOCKED", "STORE_SLOW"})
#: The oldest verdict a process uses without reading the token again, while no token has
#: been revoked since (``_still_current``).
CACHE_FOR = timedelta(seconds=1)
#: Meta entry moved by every revocation, in its transaction: how a process learns that its
#: cached verdicts may be stale, whichever process (worker, `keyturn token revoke`) revoked.
REVISION = "access_tokens.revision"
ADMIN_NAME = "admin"
#: Where the admin token was written at first start (replica and path), for the others.
ADMIN_TOKEN_AT = "admin_token.written_to"
log = logging.getLogger("keyturn.security")
#: The longest lifetime a token may be given (none at all: no expiry).
MAX_TTL = timedelta(days=3650)
#: Refused logins audited one by one per FAILURE_WINDOW, all peers together; the rest
#: are counted, and audited as one entry with their number every few seconds.
AUDITED_FAILURES = 50
FAILURE_WINDOW = timedelta(seconds=10)


class _FailureBudget:
    """How many refused logins are audited one by one in each window, whoever sends
    them: the per-peer dedup alone lets many addresses (a botnet, an IPv6 /64) write one
    entry each, at the rate they can connect."""

    def __init__(self, limit: int, window: timedelta) -> None:
        self.limit = limit
        self.window = window
        self._index = -1
        self._used = 0
        #: Refusals not audited one by one, not yet audited as a count.
        self.unaudited = 0

    def admit(self, now: datetime) -> bool:
        index = int(now.timestamp() // self.window.total_seconds())
        if index != self._index:
            self._index, self._used = index, 0
        if self._used >= self.limit:
            self.unaudited += 1
            return False
        self._used += 1
        return True

    def take_unaudited(self) -> int:
        count, self.unaudited = self.unaudited, 0
        return count


class AccessTokenService:
    def __init__(self, store: Store, keyring: Keyring, journal: Journal, clock: Clock) -> None:
        self._store = store
        self._keyring = keyring
        self._journal = journal
        self._clock = clock
        self._used: dict[str, datetime] = {}
        #: Tokens seen recently, so that most calls cost no store read. A verdict is used
        #: only while no token was revoked since (REVISION), by this process or another.
        self._known: dict[str, tuple[AccessToken, datetime]] = {}
        self._stamp: int | None = None
        self._revision: bytes | None = None
        #: Authentication failures are audited, but at most once per peer (an IPv6 peer
        #: by its /64) per window, and AUDITED_FAILURES per window in all, so that a flood
        #: of bad tokens cannot flood the audit log.
        self.failures = InvalidTokenFloodDetector(threshold=1, window=FAILURE_WINDOW)
        self._budget = _FailureBudget(AUDITED_FAILURES, FAILURE_WINDOW)

    # --- authentication ----------------------------------------------------------------

    def authenticate(self, secret: str, peer: str, recheck: bool = False) -> Principal:
        """The token's principal. ``recheck``: the periodic check of an open stream that
        carries no secret; where revocations cannot be seen without a read (PostgreSQL)
        it takes a verdict up to CACHE_FOR old, so that a thousand streams of one token
        cost one read a second, not a thousand (a stream ends within a second anyway)."""
        now = self._clock.now()
        current = self._still_current()
        cached = self._known.get(secret)  # after the check: none once a token was revoked
        if current is None:
            current = recheck
        if cached is not None and current and now - cached[1] < CACHE_FOR:
            token = cached[0]
        else:
            try:
                token = self._lookup(secret, now)
            except Unavailable as exc:
                if cached is None or exc.reason in _STORE_ANSWERS:
                    raise
                # The store is away, so nothing can revoke it meanwhile: a token verified
                # before still is, and the caller can at least read health.
                token = cached[0]
        if not token.usable(now):
            raise Unauthenticated(
                "the bearer token is unknown, expired or revoked", reason="INVALID_ACCESS_TOKEN"
            )
        self._used[token.name] = now
        return Principal(token.name, token.role, "token", peer)

    def _still_current(self) -> bool | None:
        """Whether no token was revoked since the cached verdicts were read, by any
        process; None where that cannot be told without a read. Another worker, replica
        or `keyturn token revoke` used to have its revocation ignored here for CACHE_FOR:
        a stolen token went on working on every other process for up to a second after
        RevokeAccessToken answered.

        On SQLite the store's change stamp (about 1 µs) says whether anything was
        committed at all; only then is the revision read. PostgreSQL has no stamp, and a
        per-call check is a round trip, as dear as the token's own read: every call there
        reads the token (as every call there reads its key)."""
        stamp = self._store.change_stamp()
        if stamp is None:
            return None
        if stamp == self._stamp:
            return True
        try:
            revision = self._store.read().get_meta(REVISION)
        except Unavailable:
            return False  # the lookup meets the same refusal and decides
        self._stamp = stamp
        if revision == self._revision:
            return True
        self._revision = revision
        self._known.clear()
        return False

    def _lookup(self, secret: str, now: datetime) -> AccessToken:
        parsed = tokens.parse(secret)
        if parsed is None or parsed.type != tokens.ACCESS_TOKEN_TYPE:
            raise Unauthenticated(
                "the bearer token is not a Keyturn access token", reason="MALFORMED_ACCESS_TOKEN"
            )
        token = self._store.read().token_by_digest(self._keyring.digest(secret))
        if token is None:
            raise Unauthenticated(
                "the bearer token is unknown, expired or revoked", reason="INVALID_ACCESS_TOKEN"
            )
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[secret] = (token, now)
        return token

    async def audit_failure(self, peer: str, method: str, why: str) -> None:
        now = self._clock.now()
        if self.failures.record(presenter_peer(peer), now) is None:
            return
        if not self._budget.admit(now):
            return  # counted, audited as a number by flush_usage

        def work(repo: Repository) -> None:
            self._journal.audit(
                repo,
                "auth.failure",
                about=Resource("rpc", method),
                by=None,
                peer=peer,
                outcome="denied",
                details={"why": why},
                time=now,
            )

        await self._store.write(work)

    async def flush_usage(self) -> None:
        """Write what is counted in memory: the tokens' last use, and the number of
        refused logins past the audit budget (every few seconds, and at stop)."""
        unaudited = self._budget.take_unaudited()
        if unaudited:
            now = self._clock.now()

            def count(repo: Repository) -> None:
                self._journal.audit(
                    repo,
                    "auth.failure.unaudited",
                    about=Resource("rpc"),
                    by=None,
                    peer="",
                    outcome="denied",
                    reason=f"more than {AUDITED_FAILURES} refused logins in "
                    f"{FAILURE_WINDOW.total_seconds():g} s",
                    details={"count": str(unaudited)},
                    time=now,
                )

            try:
                await self._store.write(count)
            except KeyturnError:
                self._budget.unaudited += unaudited  # audited by the next flush instead
                raise
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            await self._store.write(lambda repo: repo.touch_tokens(used))
        except KeyturnError:
            for name, when in used.items():
                later = self._used.get(name)
                self._used[name] = when if later is None else max(when, later)
            raise

    # --- management ----------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        name: str,
        role: Role | None,
        ttl: timedelta | None,
        user_id: str,
    ) -> tuple[AccessToken, str]:
        principal.require_grant()
        limits.raise_if(limits.common(user_id))
        if role is None:
            raise InvalidArgument("required: ADMIN, OPERATOR, SERVICE or AUDITOR", field="role")
        granted: Role = role
        if not NAME.fullmatch(name):
            raise InvalidArgument(
                "1-64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit", field="name"
            )
        if name in RESERVED_NAMES:
            raise InvalidArgument(
                f"{name!r} is reserved: the server audits its own work or anonymous "
                "development callers under it",
                field="name",
            )
        if ttl is not None and not timedelta(0) < ttl <= MAX_TTL:
            raise InvalidArgument("must be positive and at most 3650 days", field="ttl")
        secret = tokens.new_token(tokens.ACCESS_TOKEN_TYPE, TOKEN_BYTES)

        def work(repo: Repository) -> AccessToken:
            existing = repo.get_token(name)
            if existing is not None and existing.revoke_time is None:
                raise AlreadyExists(
                    f"an access token named {name!r} exists; revoke it first to replace it",
                    reason="TOKEN_EXISTS",
                )
            return self._insert(
                repo, principal, name, granted, secret, ttl, user_id, replaces=existing
            )

        return await self._store.write(work), secret

    def _insert(
        self,
        repo: Repository,
        principal: Principal,
        name: str,
        role: Role,
        secret: str,
        ttl: timedelta | None,
        user_id: str,
        replaces: AccessToken | None = None,
    ) -> AccessToken:
        """A new token named ``name``; ``replaces``: the revoked token of that name. The
        name is the principal that owns keys and handles, so a stolen token's successor
        takes its name to keep them: before, a revoked name could never be used again,
        and containing a theft cost the service everything it owned (NOT_FOUND)."""
        now = self._clock.now()
        token = AccessToken(
            name,
            role,
            self._keyring.digest(secret),
            now,
            principal.name,
            now + ttl if ttl else None,
        )
        details = {"role": role.value, "digest": token.digest.hex()[:16]}
        if replaces is not None:
            details["replaces_revoked"] = "true"
        stored = repo.replace_revoked_token(token) if replaces else repo.insert_token(token)
        if not stored:
            raise AlreadyExists(
                f"an access token named {name!r} exists (created at this moment elsewhere)",
                reason="TOKEN_EXISTS",
            )
        self._journal.audit(
            repo,
            "token.create",
            about=Resource("access_token", name),
            by=principal,
            user_id=user_id,
            details=details,
        )
        return token

    def list_tokens(self, principal: Principal, include_revoked: bool) -> list[AccessToken]:
        principal.require(Permission.TOKEN_MANAGE)
        return self._store.read().list_tokens(include_revoked)

    async def revoke(
        self, principal: Principal, name: str, user_id: str, reason: str
    ) -> AccessToken:
        principal.require_grant()
        limits.raise_if(limits.common(user_id, reason))

        def work(repo: Repository) -> AccessToken:
            token = repo.get_token(name)
            if token is None:
                raise NotFound(
                    f"no access token named {limits.quote(name)}", reason="TOKEN_NOT_FOUND"
                )
            if token.revoke_time is not None:
                raise FailedPrecondition(
                    f"access token {name!r} is already revoked", reason="TOKEN_ALREADY_REVOKED"
                )
            revoked = dataclasses.replace(token, revoke_time=self._clock.now())
            repo.update_token(revoked)
            count = int(repo.get_meta(REVISION) or b"0")
            repo.set_meta(REVISION, str(count + 1).encode())
            repo.after_commit(self._known.clear)
            self._journal.audit(
                repo,
                "token.revoke",
                about=Resource("access_token", name),
                by=principal,
                user_id=user_id,
                reason=reason,
            )
            return revoked

        return await self._store.write(work)

    async def bootstrap_admin(self, data_dir: Path, replica: str) -> str | None:
        """On first start (no token at all) create the admin token and write it to
        DATA_DIR/admin.token. Returns the secret when this process created it.

        Replicas starting at once on an empty database create one between them: the
        unit of work re-checks that there is no token, and of two that both found none
        the second insert conflicts and is rolled back. Every other replica says, once
        at start, where the token is."""
        path = data_dir / "admin.token"
        secret = tokens.new_token(tokens.ACCESS_TOKEN_TYPE, TOKEN_BYTES)

        def work(repo: Repository) -> AccessToken | None:
            if repo.list_tokens(include_revoked=True):
                return None
            repo.set_meta(ADMIN_TOKEN_AT, f"{replica}:{path}".encode())
            return self._insert(repo, SYSTEM, ADMIN_NAME, Role.ADMIN, secret, None, "")

        created: AccessToken | None = None
        if not self._store.read().list_tokens(include_revoked=True):
            try:
                created = await self._store.write(work)
            except (Aborted, AlreadyExists):  # another replica inserted it at this very moment
                created = None
        if created is None:
            if not path.exists():
                where = (self._store.read().get_meta(ADMIN_TOKEN_AT) or b"").decode()
                log.info(
                    "no admin.token in this data directory: the admin token was made at first "
                    "start by another replica or an earlier run (admin_token_at); make more "
                    "with 'keyturn token create'",
                    extra={"category": "security", "admin_token_at": where or "unknown"},
                )
            return None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return secret
