"""The PostgreSQL backend, for several replicas on one database: the store (store.py),
connections that survive the database (connections.py, link.py), the election of the
replica that runs the scheduler (leadership.py), and schema upgrades that wait for no one
(upgrade.py)."""

from keyturn_server.store.postgres.appends import APPEND_LOCK
from keyturn_server.store.postgres.connections import PgConnection
from keyturn_server.store.postgres.leadership import LEADER_LOCK, PgLeadership
from keyturn_server.store.postgres.store import CHANNEL, PostgresStore

__all__ = ["APPEND_LOCK", "CHANNEL", "LEADER_LOCK", "PgConnection", "PgLeadership", "PostgresStore"]
