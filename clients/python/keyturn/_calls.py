"""What every typed method shares: the stubs, the call itself (metadata, one deadline,
retries of the calls the API marks idempotent, error mapping), enum arguments given as
names, and page walking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc

from keyturn import _policy
from keyturn._errors import Cancelled, ServerError, from_rpc_error
from keyturn._retry import RetryPolicy, Sleep, retrying
from keyturn.v1 import admin_pb2_grpc, handles_pb2_grpc, keys_pb2_grpc

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Item = TypeVar("Item")
V = TypeVar("V", bound=int)


class Caller:
    """The channel's three service stubs and the call discipline of the client."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
        timeout: float | None,
        retry: RetryPolicy,
        closed: Callable[[], bool] = lambda: False,
        pause: Sleep = asyncio.sleep,
    ) -> None:
        self._keys = keys_pb2_grpc.KeyServiceStub(channel)
        self._handles = handles_pb2_grpc.HandleServiceStub(channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._retry = retry
        self._is_closed = closed
        #: The wait between attempts (and a watch's reconnects), cut short by close().
        self._pause = pause
        # The stubs' callables of the methods whose idempotency_level allows a retry.
        stubs = zip(_policy.SERVICES, (self._keys, self._handles, self._admin), strict=True)
        self._retryable: frozenset[object] = frozenset(
            getattr(stub, method.name)
            for service, stub in stubs
            for method in service.methods
            if _policy.retryable(method)
        )

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None = None,
    ) -> Resp:
        """One unary call within one deadline: ``timeout`` seconds, or the client's.
        Methods the API marks idempotent are retried per the policy; any failure is
        raised as a KeyturnError subclass."""

        async def attempt(left: float | None) -> Resp:
            return await method(request, timeout=left, metadata=self._metadata)

        policy = self._retry if method in self._retryable else _ONCE
        if self._is_closed():
            raise client_closed()
        try:
            deadline = self._timeout if timeout is None else timeout
            return await retrying(attempt, policy, deadline, sleep=self._pause)
        except grpc.aio.AioRpcError as error:
            if self._is_closed():  # whatever the last attempt said, the client closed
                raise client_closed() from error
            raise from_rpc_error(error) from error
        except (asyncio.CancelledError, grpc.aio.UsageError):
            # grpc ends the calls of a closed channel with asyncio's CancelledError (and
            # refuses new attempts with UsageError): the caller's task was not cancelled.
            if self._is_closed() and not cancelling():
                raise client_closed() from None
            raise


def client_closed() -> Cancelled:
    """The error of a call cut short, or refused, because its client was closed."""
    return Cancelled("the client was closed", code=grpc.StatusCode.CANCELLED)


def cancelling() -> bool:
    """Whether the running task itself is being cancelled (by its caller, a timeout...)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_ONCE = RetryPolicy(max_attempts=1)


async def pages(
    fetch: Callable[[str], Awaitable[Resp]],
    items: Callable[[Resp], Sequence[Item]],
    token: Callable[[Resp], str],
    limit: int | None = None,
) -> AsyncIterator[Item]:
    """Every item of a paginated list, fetching the next page only when needed.

    A next_page_token already followed (a server or proxy replaying a page) would walk the
    same pages for ever: it ends the walk with ``ServerError`` (INTERNAL, reason
    PAGE_TOKEN_REPEATED), as gRPC reports a malformed answer, rather than stopping quietly
    with a list the caller would take for complete."""
    page_token, seen = "", 0
    followed = {page_token}
    while True:
        response = await fetch(page_token)
        for item in items(response):
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield item
        page_token = token(response)
        if not page_token or (limit is not None and seen >= limit):
            return  # a limit met at a page's end asks for no page to find out
        if page_token in followed:
            raise page_token_repeated(len(followed))
        followed.add(page_token)


def page_token_repeated(pages: int) -> ServerError:
    """The error of a list whose server answered with a page token it had given before;
    the token itself stays out of the message (it is bound to the caller)."""
    return ServerError(
        f"the server returned an already followed next_page_token after {pages} page(s):"
        " the list cannot be walked further",
        code=grpc.StatusCode.INTERNAL,
        reason="PAGE_TOKEN_REPEATED",
    )


def enum_value(wrapper: _EnumTypeWrapper[V], prefix: str, value: V | str | None) -> V:
    """An enum argument given as its number, its full name ("KEY_STATUS_ACTIVE") or its
    short name ("active"); None is the UNSPECIFIED value (no filter)."""
    if value is None:
        return wrapper.Value(f"{prefix}_UNSPECIFIED")
    if not isinstance(value, str):
        return value
    name = value.strip().upper().replace("-", "_")
    if not name.startswith(f"{prefix}_"):
        name = f"{prefix}_{name}"
    try:
        return wrapper.Value(name)
    except ValueError:
        known = ", ".join(short_name(wrapper, prefix, v) for v in wrapper.values() if v)
        raise ValueError(f"{value!r} is not one of: {known}") from None


def short_name(wrapper: _EnumTypeWrapper[V], prefix: str, value: V) -> str:
    """The name without its prefix (ACTIVE for KEY_STATUS_ACTIVE), or the number itself
    when this client does not know it."""
    try:
        return wrapper.Name(value).removeprefix(f"{prefix}_")
    except ValueError:
        return str(int(value))
