"""What the domain needs from storage, one protocol per aggregate, and the Store that
runs units of work over them. The store package implements these; the domain imports
nothing from it."""

from keyturn_server.domain.lease import LeaseRepository
from keyturn_server.domain.repositories.access_tokens import AccessTokenRepository
from keyturn_server.domain.repositories.audit import AuditRepository
from keyturn_server.domain.repositories.config import ConfigRepository, StoredConfig
from keyturn_server.domain.repositories.deadlines import DeadlineQueue
from keyturn_server.domain.repositories.events import EventLog
from keyturn_server.domain.repositories.handles import AnomalyLog, HandleRepository
from keyturn_server.domain.repositories.keys import KeyRepository
from keyturn_server.domain.repositories.meta import MetaRepository, RowProtection
from keyturn_server.domain.repositories.sealed import SealedKind, SealedValue, SealedValues
from keyturn_server.domain.repositories.store import (
    CommitListener,
    Repository,
    Store,
    StoreStatus,
    Transaction,
)

__all__ = [
    "AccessTokenRepository",
    "AnomalyLog",
    "AuditRepository",
    "CommitListener",
    "ConfigRepository",
    "DeadlineQueue",
    "EventLog",
    "HandleRepository",
    "KeyRepository",
    "LeaseRepository",
    "MetaRepository",
    "Repository",
    "RowProtection",
    "SealedKind",
    "SealedValue",
    "SealedValues",
    "Store",
    "StoreStatus",
    "StoredConfig",
    "Transaction",
]
