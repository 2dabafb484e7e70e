"""Row integrity: every row that grants rights carries a MAC, computed and checked here,
in the store, so that the domain's rules never see a forged record.

Whoever can write the database file but does not hold MASTER_KEY could otherwise make a
token an admin, give a key or a handle to another owner, un-revoke a handle, reset its
usage count, extend an expiry, move a token's secret to another handle, or re-enable a
destroyed key version, with one UPDATE. Each such row now carries HMAC-SHA256 (a key
derived from the keyring, crypto/integrity.py) over its table, its identity and the
columns that decide what it allows. A row whose MAC fails is *tampered*: it is logged as
a security event (naming the table and record, never a secret), counted, kept away from
the scheduler, and each read treats it as its callers need (a single key or handle is
DATA_LOSS; a validation, an authentication or a listing sees it as absent).

Covered, per table (what is left out changes through plain SQL and grants nothing, or
is sealed and bound to its record by its own AEAD):

- ``handles``: identity, type, state, owner, usage and its limit, rotation and expiry
  times, generation, the bound context, the schedule and the rate window (not the
  informational context, notify time, last use, anomaly count or revoke reason);
- ``handle_secrets``: digest, handle, generation and the grace period (not the sealed
  successor, which is AEAD-bound to its handle and generation);
- ``keys``: every column but the usage count and last use;
- ``key_versions``: every column but the sealed material, with the nonce reservation;
- ``access_tokens``: every column but the last use;
- ``config``: every column; ``events``: every column but the sequence (assigned by the
  database) and the sealed token.

A MAC proves that Keyturn wrote a row for that record; it cannot prove that the row is
the latest Keyturn wrote. A writer who saved an older copy of a row can put it back
(docs/security.md says what detects that, and what does not).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from keyturn_server.clock import optional_micros, to_micros
from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.errors import DataLoss
from keyturn_server.domain.handles import Handle, HandleSecret
from keyturn_server.store import rows

log = logging.getLogger("keyturn.security")

KEY_COLUMNS = (
    "id",
    "type",
    "algorithm",
    "key_length",
    "state",
    "primary_version",
    "owner",
    "created_for",
    "metadata",
    "create_time",
    "rotation_interval",
    "warning_threshold",
    "max_lifetime",
    "exportable",
    "next_rotation_time",
    "expire_time",
    "warn_time",
    "notify_time",
    "destroy_time",
    "restore_state",
)
VERSION_COLUMNS = (
    "key_id",
    "version",
    "state",
    "create_time",
    "expire_time",
    "destroy_time",
    "public_pem",
    "nonces_reserved",
)
#: Who disabled a key version (schema 6) has a MAC of its own, over the version's
#: identity and it: the row's MAC stays what schema 5 computes, so an older replica still
#: running during a rolling upgrade authenticates the row and refuses the version as
#: DISABLED. Covering it by the row's MAC made every disabled version read as tampered
#: there (DATA_LOSS, "restore it from a backup", in the middle of the incident).
HOLD_TABLE = "key_version_holds"
TOKEN_COLUMNS = (
    "name",
    "role",
    "digest",
    "create_time",
    "expire_time",
    "revoke_time",
    "created_by",
)
CONFIG_COLUMNS = ("revision", "body", "update_time", "updated_by")
EVENT_COLUMNS = (
    "time",
    "kind",
    "subject",
    "subject_id",
    "subject_type",
    "owner",
    "deadline",
    "reason",
    "key_version",
    "snapshot",
    "anomaly",
)
#: Quarantined records kept from the scheduler, at most (each is a parameter of its
#: deadline queries); past it, the oldest is forgotten and may be tried again.
MAX_QUARANTINE = 256
#: Rows whose MAC this process computed or checked last, remembered with what it covered:
#: a handle read back as it was written needs no second HMAC (the validation path reads
#: the row each call has just written). ~200 bytes each.
KNOWN_ROWS = 16_384

# One encoder (a new one per call costs more than the HMAC): JSON with ASCII escapes is
# one unambiguous encoding whatever the Python version and its Unicode tables.
_encode = json.JSONEncoder(separators=(",", ":")).encode

_US = timedelta(microseconds=1)


def _plain(value: Any) -> Any:
    return bytes(value).hex() if isinstance(value, bytes | memoryview) else value


def columns_of(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    """The covered columns of a stored (or about to be stored) row, in order."""
    return tuple(_plain(row[c]) for c in columns)


def hold_fields(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the MAC of a version's hold covers (see HOLD_TABLE)."""
    return (row["key_id"], row["version"], row["disabled_by"])


def handle_fields(handle: Handle) -> tuple[Any, ...]:
    """What a handle's MAC covers, read off the record: the validation path computes it
    once on read and once on write, so it avoids building the whole row."""
    schedule, rate = handle.schedule, handle.rate
    return (
        handle.id,
        handle.type,
        handle.algorithm,
        handle.state.value,
        handle.owner,
        handle.usage_count,
        handle.max_usage,
        to_micros(handle.rotate_time),
        to_micros(handle.expire_time),
        handle.generation,
        handle.bound_ip,
        handle.bound_user_agent,
        schedule.rotation_interval // _US,
        schedule.max_lifetime // _US,
        schedule.grace_period // _US,
        optional_micros(rate.start),
        rate.previous,
        rate.current,
    )


def secret_fields(secret: HandleSecret) -> tuple[Any, ...]:
    return (
        secret.digest.hex(),
        secret.handle_id,
        secret.generation,
        to_micros(secret.create_time),
        optional_micros(secret.superseded_time),
        optional_micros(secret.grace_until),
    )


class RowIntegrity:
    """Tags and checks rows for one store (shared by all its connections); remembers the
    records found tampered, so the scheduler stops trying to act on them."""

    def __init__(self, protection: Protection | None = None) -> None:
        self._protection = protection
        self.tampered: Counter[str] = Counter()
        #: Key and handle ids whose rows failed, oldest first.
        self.quarantined: dict[str, None] = {}
        #: Called with the table of every tampered row found (statistics, metrics).
        self.listeners: list[Callable[[str], None]] = []
        self._known: OrderedDict[tuple[str, str], tuple[tuple[Any, ...], bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = DecodedRows()

    @property
    def protection(self) -> Protection:
        if self._protection is None:
            raise RuntimeError("rows were read or written before the store's keys were set")
        return self._protection

    def protect(self, protection: Protection) -> None:
        """Set the keys (once the keyring is open); until then only named values
        (the wrapped keyring, the salt) may be read and written."""
        self._protection = protection
        self.decoded.clear()  # verified under the keys before: verify again

    @staticmethod
    def _message(table: str, fields: tuple[Any, ...]) -> bytes:
        return _encode((table, *fields)).encode()

    def tag(self, table: str, fields: tuple[Any, ...], record: str = "") -> bytes:
        """The MAC of a row about to be written (``record`` names it, to be remembered)."""
        tag = self.protection.rows.tag(self._message(table, fields))
        if record:
            self._remember(table, record, fields, tag)
        return tag

    def intact(
        self, table: str, fields: tuple[Any, ...], tag: Any, record: str, resource: str = ""
    ) -> bool:
        """Whether ``tag`` (as stored) is the MAC of ``fields``; a failure is reported."""
        if tag is not None:
            tag = bytes(tag)
            if self._known.get((table, record)) == (fields, tag):
                return True  # exactly what this process wrote or checked last
            if self.protection.rows.verify(self._message(table, fields), tag):
                self._remember(table, record, fields, tag)
                return True
        self.report(table, record, resource, "missing" if tag is None else "wrong")
        return False

    def _remember(self, table: str, record: str, fields: tuple[Any, ...], tag: bytes) -> None:
        with self._lock:  # PostgreSQL's units of work run in threads
            known = self._known
            known[(table, record)] = (fields, tag)
            known.move_to_end((table, record))
            if len(known) > KNOWN_ROWS:
                known.popitem(last=False)

    def require(
        self, table: str, fields: tuple[Any, ...], tag: Any, record: str, resource: str = ""
    ) -> None:
        """As :meth:`intact`, for reads that name one record: a tampered one is DATA_LOSS."""
        if not self.intact(table, fields, tag, record, resource):
            raise tampered(table, record)

    def report(self, table: str, record: str, resource: str, how: str) -> None:
        self.tampered[table] += 1
        first = resource not in self.quarantined
        if resource:
            self.quarantined[resource] = None
            if len(self.quarantined) > MAX_QUARANTINE:
                del self.quarantined[next(iter(self.quarantined))]
        if first:
            log.error(
                "a stored row failed authentication and is treated as tampered",
                extra={"category": "security", "table": table, "record": record, "mac": how},
            )
        for listener in self.listeners:
            listener(table)

    def excluded(self) -> list[str]:
        """Ids the scheduler must skip (their rows are tampered)."""
        return list(self.quarantined)


def tampered(table: str, record: str) -> DataLoss:
    return DataLoss(
        f"the stored {table} row of {record!r} failed authentication: it was altered "
        "outside Keyturn; restore it from a backup",
        reason="RECORD_TAMPERED",
        metadata={"table": table},
    )


class DecodedRows:
    """Handle and secret rows this process decoded and verified, or wrote, lately, by
    their exact stored values (their MACs included).

    A validation reads its handle's row and its secret's row. Under load the same rows
    come back again and again, changed only by this process's own counter updates, and
    decoding them into records and checking their MACs cost about a third of a
    validation's time in the store. A row read back with exactly the values kept here is
    the record kept with them, verified when it was first read or computed when it was
    written: neither decoded nor MAC'd again. Any other value (another worker's write, an
    edit behind the server's back) is not found here, and is decoded and verified as
    always, so nothing a forger writes is ever taken from here. Keyed by stored values
    only; cleared when the keys change. Dict operations only, so threads (PostgreSQL's
    units) may share it: a race costs a miss, never a wrong record.
    """

    def __init__(self) -> None:
        #: handle id -> (its row's values: MAC, then rows.HANDLE_COLUMNS; its record)
        self.handles: dict[str, tuple[tuple[Any, ...], Handle]] = {}
        #: a secret row's values (rows.SECRET_COLUMNS, then its MAC) -> its record
        self.secrets: dict[tuple[Any, ...], HandleSecret] = {}

    def clear(self) -> None:
        self.handles.clear()
        self.secrets.clear()

    def handle(self, values: tuple[Any, ...]) -> Handle | None:
        known = self.handles.get(values[1])
        return known[1] if known is not None and known[0] == values else None

    def keep_handle(self, values: tuple[Any, ...], handle: Handle) -> None:
        if not rows.kept(values[1:]):  # a large context: decoded again on each read
            return
        if len(self.handles) >= KNOWN_ROWS:
            self.handles.clear()
        self.handles[handle.id] = (values, handle)

    def secret(self, values: tuple[Any, ...]) -> HandleSecret | None:
        try:
            return self.secrets.get(values)
        except TypeError:  # a driver's unhashable value (memoryview): decode as always
            return None

    def keep_secret(self, values: tuple[Any, ...], secret: HandleSecret) -> None:
        if len(self.secrets) >= KNOWN_ROWS:
            self.secrets.clear()
        with contextlib.suppress(TypeError):  # unhashable: not kept
            self.secrets[values] = secret

    def wrote_counters(
        self, before: Handle, after: Handle, counters: tuple[Any, ...], tag: bytes
    ) -> None:
        """``before``'s row now holds ``after``: its counter columns ``counters``
        (rows.COUNTER_COLUMNS, as stored) and MAC ``tag``, the rest unchanged."""
        known = self.handles.get(before.id)
        if known is None or known[1] is not before:
            self.handles.pop(before.id, None)
            return
        values = known[0]
        settled = values[1 : len(values) - len(counters)]
        self.handles[after.id] = ((tag, *settled, *counters), after)

    def forget_handle(self, handle_id: str) -> None:
        self.handles.pop(handle_id, None)
