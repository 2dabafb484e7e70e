"""What happens to a handle over its life, whoever asks: rotation (a caller's RotateHandle
or the scheduler's), the successors it seals for the owner, warnings, expiry and the end
of a grace period. Each step runs inside the caller's unit of work and journals itself.

Rotation is dual-phase: the new secret is issued and the previous one validates (with
rotated=true) until its grace ends; a caller's rotation stops any older one at once. An
automatic rotation seals the successor twice: once on the superseded secret, so that its
holder can collect it with RotateHandle, and once on the ROTATED event, for the owner's
WatchExpiring stream.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from keyturn_server.clock import Clock
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.crypto.seal import SealError, binding
from keyturn_server.domain import tokens
from keyturn_server.domain.access import SYSTEM, Principal
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.deadlines import SecretRef
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.handles import Handle, HandleSecret, HandleState, handle_deadlines
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.repositories import Repository

SECRET_TABLE = "handle_secrets"


def successor_binding(handle_id: str, generation: int) -> bytes:
    """What a sealed successor is bound to: its handle, and the generation named."""
    return binding(SECRET_TABLE, handle_id, generation)


def withdraw_successors(
    repo: Repository, handle_id: str, through: datetime, generation: int | None = None
) -> None:
    """Sealed successors stop being collectable: those on the handle's secrets (of one
    ``generation``, or all), and those its events carry up to ``through``. Whatever ends
    a handle's life (a caller, the scheduler, a validation's verdict) calls it, so that no
    live secret of a dead handle is left to hand out."""
    for secret in repo.secrets_of(handle_id):
        if secret.sealed_token is not None and generation in (None, secret.generation):
            repo.update_secret(dataclasses.replace(secret, sealed_token=None))
    repo.clear_sealed_event_tokens(handle_id, through)


class HandleLifecycle:
    def __init__(
        self, keyring: Keyring, config: ConfigService, journal: Journal, clock: Clock
    ) -> None:
        self._keyring = keyring
        self._config = config
        self._journal = journal
        self._clock = clock

    # --- rotation ----------------------------------------------------------------------

    def rotate(
        self,
        repo: Repository,
        handle: Handle,
        *,
        by: Principal,
        user_id: str,
        reason: str,
        deliver: bool,
    ) -> tuple[str, Handle, datetime]:
        """Issue the next secret; the current one enters its grace period. With
        ``deliver`` (automatic rotation) the new secret is sealed for its owner.
        Returns (the new secret, the handle after, when the previous secret stops)."""
        now = self._clock.now()
        token = tokens.new_token(handle.type, self._secret_bytes(handle))
        digest = self._keyring.digest(token, handle.algorithm)
        grace_until = min(now + handle.schedule.grace_period, handle.expire_time)
        generation = handle.generation + 1
        sealed = (
            self._keyring.seal(token.encode(), successor_binding(handle.id, generation - 1))
            if deliver
            else None
        )
        for old in repo.live_secrets_of(handle.id, handle.generation, now):
            if old.generation == handle.generation:
                repo.update_secret(
                    dataclasses.replace(
                        old, superseded_time=now, grace_until=grace_until, sealed_token=sealed
                    )
                )
            elif not deliver and old.grace_until is not None and old.grace_until > now:
                # A caller's rotation leaves a grace to the secret it supersedes only.
                # Before, each earlier one kept its own, so rotating twice (an owner who
                # suspects a leak) left the leaked secret valid, and N rotations in a row
                # left N+1 live secrets. The scheduler's rotations keep each its grace: a
                # type's grace may outlast its rotation interval, for owners offline that
                # long, who collect their successors one generation after another.
                repo.update_secret(dataclasses.replace(old, grace_until=now, sealed_token=None))
        repo.insert_secret(HandleSecret(digest, handle.id, generation, now))
        rotate, warn = handle_deadlines(now, handle.expire_time, handle.schedule)
        rotated = dataclasses.replace(
            handle,
            generation=generation,
            rotate_time=rotate,
            warn_time=warn,
            # A window already open (the last rotation before expiry) is announced at once.
            notify_time=warn,
        )
        repo.update_handle(handle, rotated)
        event_token = (
            self._keyring.seal(token.encode(), successor_binding(handle.id, generation))
            if deliver
            else None
        )
        self._journal.event(
            repo,
            EventKind.ROTATED,
            rotated,
            reason=reason,
            deadline=rotate,
            sealed_token=event_token,
        )
        self._journal.audit(
            repo,
            "handle.rotate",
            about=rotated,
            by=by,
            user_id=user_id,
            reason=reason,
            details={
                "generation": str(generation),
                "token_digest": digest.hex()[:16],
                "previous_valid_until": grace_until.isoformat(),
            },
        )
        return token, rotated, grace_until

    def _secret_bytes(self, handle: Handle) -> int:
        handle_type = self._config.current.handle_types.get(handle.type)
        return handle_type.handle_length if handle_type else 32

    def collect_successor(self, handle: Handle, secret: HandleSecret) -> str | None:
        """The successor an automatic rotation sealed on ``secret``; None if it does not
        open (altered, or bound to another record)."""
        if secret.sealed_token is None:
            return None
        return self.open_delivered(handle.id, secret.generation, secret.sealed_token)

    def open_delivered(self, handle_id: str, generation: int, sealed: bytes) -> str | None:
        try:
            return self._keyring.open(sealed, successor_binding(handle_id, generation)).decode()
        except SealError:
            return None

    # --- what the scheduler does at a deadline -------------------------------------------
    # Each re-checks its condition under the row lock and returns whether it acted.

    def rotate_due(self, repo: Repository, handle_id: str, now: datetime) -> bool:
        handle = repo.get_handle(handle_id, for_update=True)
        if handle is None or handle.state is not HandleState.ACTIVE:
            return False
        if handle.rotate_time > now:
            return False
        if handle.expire_time <= now:
            return self.expire(repo, handle_id, now)  # caught up late: it expires instead
        if handle.rotate_time >= handle.expire_time:
            return False
        self.rotate(repo, handle, by=SYSTEM, user_id="", reason="scheduled", deliver=True)
        return True

    def expire(self, repo: Repository, handle_id: str, now: datetime) -> bool:
        handle = repo.get_handle(handle_id, for_update=True)
        if handle is None or handle.state not in (HandleState.ACTIVE, HandleState.EXHAUSTED):
            return False
        if handle.expire_time > now:
            return False
        expired = dataclasses.replace(handle, state=HandleState.EXPIRED, notify_time=None)
        repo.update_handle(handle, expired)
        withdraw_successors(repo, handle_id, now)
        self._journal.event(
            repo,
            EventKind.EXPIRED,
            expired,
            reason="max lifetime reached",
            deadline=expired.expire_time,
        )
        return True

    def warn(self, repo: Repository, handle_id: str, now: datetime) -> bool:
        handle = repo.get_handle(handle_id, for_update=True)
        if handle is None or handle.state is not HandleState.ACTIVE:
            return False
        if handle.notify_time is None or handle.notify_time > now:
            return False
        if handle.expire_time <= now:
            # Past its end of life (caught up late): it expires, unwarned. Expired here,
            # as a late rotation is: left as it was, its warning (and rotation) stayed due
            # ahead of its expiry, and a batch of such handles kept the scheduler from
            # reaching any later deadline, spinning on them for good.
            return self.expire(repo, handle_id, now)
        # What the warning announces is judged from when its window opened, so that one
        # sent late (caught up after a scheduler outage) names the deadline it was for.
        opened = handle.notify_time
        rotating = handle.rotate_time > opened and handle.rotate_time < handle.expire_time
        deadline = handle.rotate_time if rotating else handle.expire_time
        again: datetime | None = None
        if rotating:
            # The expiry's own warning follows, for when the rotation is not made. While
            # rotation is enforced it is not before the rotation, which comes first and
            # sets the next warning: so one turned off after this warning (an operator
            # during an incident) still leaves the expiry announced, not unwarned.
            again = handle.expire_time - handle.schedule.warning_threshold
            if self._config.current.policies.enforce_rotation:
                again = max(again, handle.rotate_time)
            again = again if again > opened else None
        repo.update_handle(handle, dataclasses.replace(handle, notify_time=again))
        what = "rotation" if rotating else "expiry"
        self._journal.event(
            repo,
            EventKind.EXPIRING,
            handle,
            reason=f"{what} at {deadline.isoformat()}",
            deadline=deadline,
        )
        return True

    def end_grace(self, repo: Repository, ref: SecretRef, now: datetime) -> bool:
        for secret in repo.live_secrets_of(ref.handle_id, ref.generation, now):
            if (
                secret.generation == ref.generation
                and secret.sealed_token is not None
                and secret.grace_until is not None
                and secret.grace_until <= now
            ):
                withdraw_successors(
                    repo, ref.handle_id, secret.superseded_time or now, ref.generation
                )
        return True
