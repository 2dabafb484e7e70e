"""API access tokens: bearer secrets that name a principal and its role."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from keyturn_server.domain.access import ANONYMOUS, SYSTEM, Role

#: Use with fullmatch: "$" also matches before a trailing newline.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: The server audits its own work (the scheduler, first start) and, in development
#: mode, callers without credentials under these principals: a token or certificate
#: given one would pass for them in the audit log.
RESERVED_NAMES = frozenset({SYSTEM.name, ANONYMOUS})


@dataclass(frozen=True)
class AccessToken:
    name: str
    role: Role
    #: Keyed digest of the secret; the secret itself is never stored.
    digest: bytes
    create_time: datetime
    created_by: str
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    last_used_time: datetime | None = None

    def usable(self, now: datetime) -> bool:
        if self.revoke_time is not None:
            return False
        return self.expire_time is None or now < self.expire_time
