"""AIP-158 pagination: page sizes, and opaque page tokens that resume after a cursor.

A token holds the last item's (create_time, id) and a fingerprint of the filters it was
issued for; reusing it with other filters is INVALID_ARGUMENT, as AIP-158 asks.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from keyturn_server.clock import to_micros
from keyturn_server.domain import limits
from keyturn_server.domain.access import Principal
from keyturn_server.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class Listing(Generic[T]):
    """One page of records as the store found it: the items, the total across pages, and
    whether more follow."""

    items: list[T]
    total: int
    more: bool


@dataclass(frozen=True)
class Cursor:
    create_time: int
    id: str


@dataclass(frozen=True)
class Page:
    size: int
    after: Cursor | None
    fingerprint: str


def _fingerprint(filters: tuple[object, ...]) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:12]


def page_request(page_size: int, page_token: str, filters: tuple[object, ...]) -> Page:
    if page_size < 0:
        raise InvalidArgument("must not be negative", field="page_size")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    fingerprint = _fingerprint(filters)
    if not page_token:
        return Page(size, None, fingerprint)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = Cursor(int(data["t"]), str(data["i"]))
        issued_for = str(data["f"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("not a page token from this service", field="page_token") from None
    if issued_for != fingerprint:
        raise InvalidArgument("page token was issued for different filters", field="page_token")
    return Page(size, cursor, fingerprint)


def next_token(page: Page, last: Cursor | None, more: bool) -> str:
    if not more or last is None:
        return ""
    raw = json.dumps({"t": last.create_time, "i": last.id, "f": page.fingerprint})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class Listed(Protocol):
    """A key or a handle, as far as paging cares."""

    @property
    def id(self) -> str: ...

    @property
    def create_time(self) -> datetime: ...


def scoped_page(
    principal: Principal,
    kind: str,
    type_name: str,
    status: object,
    owner: str,
    page_size: int,
    page_token: str,
) -> tuple[str, Page]:
    """Check a List request's filters; (the owner filter the caller may use, the page)."""
    violations: list[FieldViolation] = []
    limits.text("type", type_name, 32, violations)
    limits.text("owner", owner, 64, violations)
    limits.raise_if(violations)
    owner = principal.owner_filter(owner)
    return owner, page_request(page_size, page_token, (kind, type_name, status, owner))


def token_after(page: Page, items: Sequence[Listed], more: bool) -> str:
    last = Cursor(to_micros(items[-1].create_time), items[-1].id) if items else None
    return next_token(page, last, more)
