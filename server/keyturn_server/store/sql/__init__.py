"""The SQL both backends share, split by aggregate; :class:`SqlRepository` composes it."""

from keyturn_server.store.sql.repository import SqlRepository
from keyturn_server.store.sql.statements import Connection

__all__ = ["Connection", "SqlRepository"]
