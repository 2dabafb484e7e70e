"""A database file damaged under a running server: a failing disk, a bad sector, another
program writing into the file. SQLite then answers SQLITE_CORRUPT ("database disk image
is malformed") or SQLITE_NOTADB to whatever reads a damaged page, whichever call that is.

The start refuses such a file (``quick_check``). A running server used to answer each
such call INTERNAL with a traceback in the log, and to stay SERVING. Now the first one
makes the store damaged for good: that call and every later one that meets the damage
is DATA_LOSS (reason STORE_CORRUPT), the log says so once with the command that puts a
backup back, health says NOT_SERVING, and writes are refused from then on, because a
write into a damaged b-tree can lose rows that are still intact. Reads of pages that are
intact go on (GetKey, Encrypt, Decrypt of the keys they reach).
"""

from __future__ import annotations

import sqlite3
from typing import TypeGuard

from keyturn_server.domain.errors import DataLoss

#: SQLite's primary result codes for a file whose pages are not what it wrote.
_DAMAGE = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
REASON = "STORE_CORRUPT"
REFUSAL = (
    "the database file is damaged (a failing disk, or another program wrote into it); "
    "nothing of this request was done, and the server refuses changes until the last "
    "backup is restored (keyturn backup restore, with the server stopped)"
)


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite finding a page that is not what it wrote."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in _DAMAGE


def refusal() -> DataLoss:
    return DataLoss(REFUSAL, reason=REASON)


def is_refusal(exc: BaseException) -> TypeGuard[DataLoss]:
    return isinstance(exc, DataLoss) and exc.reason == REASON
