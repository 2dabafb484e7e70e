"""AIP-158 pagination: page sizes, and opaque page tokens that resume after a cursor.

A page token is attacker input, so it carries a MAC (a key derived from the keyring)
over its cursor, the query it pages and the principal it was issued to: a forged or
altered token, or one reused with other filters or by another caller, is refused with
INVALID_ARGUMENT before anything in it is parsed or used (AIP-158 asks for the filter
check). Tokens are bounded in length, and their JSON is read only once authenticated.

A page also stops short of ``page_size`` once its records weigh ``PAGE_BYTES`` (AIP-158:
a page may hold fewer than asked, and the token goes on after its last record). Handles
and keys carry maps of up to 32 entries of 256 characters each: a thousand of them made a
ListHandles answer of 9 MB, over the 4 MiB a gRPC answer may be, and every such page was
refused by gRPC itself (RESOURCE_EXHAUSTED "Sent message larger than max", no details)
after the whole of its work, so an owner of such handles could never list them a
thousand at a time.

The total across pages (``total_size``) is counted for the first page only and carried in
the token: counting reads every matching row (an audit log of millions of entries), so a
walk that counted on each page cost as many full counts as it had pages. Later pages
report the total as of the first one, which AIP-158 allows ("an estimate").
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from keyturn_server.clock import to_micros
from keyturn_server.crypto.integrity import Mac
from keyturn_server.domain import limits
from keyturn_server.domain.access import MAX_PRINCIPAL, Principal
from keyturn_server.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: The most a page's records may weigh (``weight_of``): a quarter of the 4 MiB a gRPC
#: answer may be (api/grpc_server.py), so that the JSON form of the same page, with its
#: field names and quoting, also stays well inside it.
PAGE_BYTES = 1024 * 1024
#: A record's fixed fields (ids, type, states, times, counts) as JSON, generously.
RECORD_BYTES = 512
#: One key version's fields as JSON.
VERSION_BYTES = 160
#: Far longer than any token this service issues (about 120 characters).
MAX_TOKEN = 512
_TAG_BYTES = 16

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _refused(
    why: str = "not a page token this service issued for this query and caller",
) -> InvalidArgument:
    return InvalidArgument(why, field="page_token", reason="INVALID_PAGE_TOKEN")


class PageTokens:
    """Issues and opens page tokens: ``payload.tag``, both base64url."""

    def __init__(self, mac: Mac) -> None:
        self._mac = mac

    def _tag(self, payload: bytes, binding: tuple[object, ...]) -> bytes:
        bound = json.dumps([str(part) for part in binding]).encode()
        return self._mac.tag(b"keyturn/v1|page|" + bound + b"|" + payload)[:_TAG_BYTES]

    def issue(self, cursor: dict[str, Any], binding: tuple[object, ...]) -> str:
        payload = json.dumps(cursor, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._tag(payload, binding))}"

    def open(self, token: str, binding: tuple[object, ...]) -> dict[str, Any]:
        """The cursor in ``token``, if this service issued it for ``binding``."""
        if len(token) > MAX_TOKEN:
            raise _refused(f"at most {MAX_TOKEN} characters")
        encoded, _, tag = token.partition(".")
        try:
            payload, presented = _unb64(encoded), _unb64(tag)
        except (binascii.Error, ValueError):
            raise _refused() from None
        if not hmac.compare_digest(self._tag(payload, binding), presented):
            raise _refused()
        try:
            cursor = json.loads(payload)
        except (ValueError, RecursionError):  # issued by us: cannot happen, but never INTERNAL
            raise _refused() from None
        if not isinstance(cursor, dict):
            raise _refused()
        return cursor


@dataclass(frozen=True)
class Page:
    size: int
    after: Cursor | None
    tokens: PageTokens
    binding: tuple[object, ...]
    #: The total counted for the first page; None on the first page (count it).
    total: int | None = None


def carried_total(cursor: dict[str, Any]) -> int | None:
    """The total an authenticated cursor carries (tokens issued before it was carried
    have none: count again)."""
    total = cursor.get("n")
    return total if isinstance(total, int) and total >= 0 else None


def checked_page_size(value: int) -> int:
    """A request's page size: the default for 0, at most the maximum."""
    if value < 0:
        raise InvalidArgument("must not be negative", field="page_size")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_request(
    tokens: PageTokens, page_size: int, page_token: str, binding: tuple[object, ...]
) -> Page:
    size = checked_page_size(page_size)
    if not page_token:
        return Page(size, None, tokens, binding)
    cursor = tokens.open(page_token, binding)
    after, record = cursor.get("t"), cursor.get("i")
    if not isinstance(after, int) or not isinstance(record, str):
        raise _refused()
    return Page(size, Cursor(after, record), tokens, binding, carried_total(cursor))


def next_token(page: Page, last: Cursor | None, more: bool, total: int) -> str:
    if not more or last is None:
        return ""
    cursor = {"t": last.create_time, "i": last.id, "n": total}
    return page.tokens.issue(cursor, page.binding)


class Listed(Protocol):
    """A key or a handle, as far as paging cares."""

    @property
    def id(self) -> str: ...

    @property
    def create_time(self) -> datetime: ...


def scoped_page(
    tokens: PageTokens,
    principal: Principal,
    kind: str,
    type_name: str,
    status: object,
    owner: str,
    page_size: int,
    page_token: str,
) -> tuple[str | None, Page]:
    """Check a List request's filters; (the owner filter the caller may use, None when
    it may see nothing of the owner it asked for; the page). Its token is bound to the
    filters and to the caller."""
    violations: list[FieldViolation] = []
    limits.text("type", type_name, 32, violations)
    limits.text("owner", owner, MAX_PRINCIPAL, violations)
    limits.raise_if(violations)
    scoped = principal.owner_filter(owner)
    status_name = getattr(status, "value", "")
    binding = (kind, type_name, status_name, scoped, principal.name)
    return scoped, page_request(tokens, page_size, page_token, binding)


def token_after(page: Page, items: Sequence[Listed], more: bool, total: int) -> str:
    last = Cursor(to_micros(items[-1].create_time), items[-1].id) if items else None
    return next_token(page, last, more, total)


def mapping_weight(mapping: Mapping[str, str]) -> int:
    """What a map of strings adds to a record's answer: its UTF-8, quotes and separators."""
    return sum(len(key.encode()) + len(value.encode()) + 6 for key, value in mapping.items())


def fitted(items: list[T], weight_of: Callable[[T], int]) -> tuple[list[T], bool]:
    """The first of ``items`` that weigh at most ``PAGE_BYTES`` together (at least one,
    which a single record's input limits keep small), and whether any were left out."""
    total = 0
    for count, item in enumerate(items):
        total += weight_of(item)
        if total > PAGE_BYTES and count:
            return items[:count], True
    return items, False
