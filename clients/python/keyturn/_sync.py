"""Client: the AsyncClient for code without an event loop. It runs its own loop on a
daemon thread and blocks on each call; every method has the async one's signature."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from keyturn._calls import client_closed
from keyturn._client import DEFAULT_ADDRESS, AsyncClient
from keyturn._errors import Cancelled
from keyturn._retry import RetryPolicy
from keyturn._transport import ChannelOptions, TLSLike
from keyturn._watch import Watch
from keyturn.v1 import events_pb2

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _LoopThread:
    """An event loop running on its own thread, and a way to wait for its work."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        #: Set by stop(): work still waited for ends with Cancelled, new work is refused.
        self.stopped = False
        self._thread = threading.Thread(target=self._serve, name="keyturn-client", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self.stopped:
            coroutine.close()
            raise client_closed()
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.stopped:  # its work was cut short by the client's close()
                raise client_closed() from None
            raise
        except BaseException:  # KeyboardInterrupt while waiting: stop the work too
            future.cancel()
            raise

    def stop(self) -> None:
        """Ends the work still running (a watch another thread reads, say) and the loop.
        Stopping again does nothing."""
        if self.stopped:
            return
        self.stopped = True
        asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _cancel_all() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], R]:
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.run(method(self._client, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


def _blocking_iterator(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[R]],
) -> Callable[Concatenate[Client, P], Iterator[R]]:
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        return self._iterate(method(self._client, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


def _blocking_watch(
    method: Callable[Concatenate[AsyncClient, P], Watch],
) -> Callable[Concatenate[Client, P], BlockingWatch]:
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> BlockingWatch:
        return BlockingWatch(method(self._client, *args, **kwargs), self._loop)

    functools.update_wrapper(call, method)
    return call


class BlockingWatch:
    """A ``Watch`` for synchronous code: iterate it, read ``last_sequence``, close it (also
    from another thread than the one iterating it, which then stops)."""

    def __init__(self, watch: Watch, loop: _LoopThread) -> None:
        self._watch = watch
        self._loop = loop
        self._closed = False

    @property
    def last_sequence(self) -> int | None:
        return self._watch.last_sequence

    @property
    def reconnects(self) -> int:
        return self._watch.reconnects

    def __iter__(self) -> BlockingWatch:
        return self

    def __next__(self) -> events_pb2.ExpiryEvent:
        if self._closed:
            raise StopIteration
        try:
            return self._loop.run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        except (concurrent.futures.CancelledError, Cancelled):
            if self._closed or self._loop.stopped:  # closed meanwhile: the normal end
                raise StopIteration from None
            raise

    def close(self) -> None:
        self._closed = True
        if not self._loop.stopped:  # a reader on another thread then stops too
            self._loop.run(self._watch.aclose())

    def __enter__(self) -> BlockingWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Client:
    """Synchronous client of Keyturn; same arguments and methods as ``AsyncClient``::

    with Client("127.0.0.1:50051", token=token) as client:
        key = client.generate_key("encryption").key
        for handle in client.iter_handles(type="workflow"):
            print(handle.id)
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        tls: TLSLike = None,
        *,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: ChannelOptions = (),
    ) -> None:
        self._loop = _LoopThread()

        async def connect() -> AsyncClient:  # the channel belongs to the loop it is made on
            return AsyncClient(
                address,
                token,
                tls,
                timeout=timeout,
                retry=retry,
                channel_options=channel_options,
            )

        try:
            self._client = self._loop.run(connect())
        except BaseException:  # a token that cannot be sent, say: no thread left behind
            self._loop.stop()
            raise
        self.address = address

    def close(self) -> None:
        """Closes the client: calls and watches other threads wait for end as they do for
        AsyncClient.close(). Closing again does nothing."""
        if self._loop.stopped:
            return
        self._loop.run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> T:
            return await anext(source)

        try:
            while True:
                try:
                    yield self._loop.run(step())
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(source, "aclose", None)
            if close is not None and not self._loop.stopped:
                self._loop.run(close())

    # KeyService
    generate_key = _blocking(AsyncClient.generate_key)
    get_key = _blocking(AsyncClient.get_key)
    list_keys = _blocking(AsyncClient.list_keys)
    iter_keys = _blocking_iterator(AsyncClient.iter_keys)
    rotate_key = _blocking(AsyncClient.rotate_key)
    remove_key = _blocking(AsyncClient.remove_key)
    restore_key = _blocking(AsyncClient.restore_key)
    disable_key_version = _blocking(AsyncClient.disable_key_version)
    enable_key_version = _blocking(AsyncClient.enable_key_version)
    get_key_statistics = _blocking(AsyncClient.get_key_statistics)
    export_key = _blocking(AsyncClient.export_key)
    encrypt = _blocking(AsyncClient.encrypt)
    decrypt = _blocking(AsyncClient.decrypt)
    sign = _blocking(AsyncClient.sign)
    verify = _blocking(AsyncClient.verify)
    get_public_key = _blocking(AsyncClient.get_public_key)
    compute_mac = _blocking(AsyncClient.compute_mac)
    verify_mac = _blocking(AsyncClient.verify_mac)
    # HandleService
    generate_handle = _blocking(AsyncClient.generate_handle)
    get_handle = _blocking(AsyncClient.get_handle)
    list_handles = _blocking(AsyncClient.list_handles)
    iter_handles = _blocking_iterator(AsyncClient.iter_handles)
    validate_handle = _blocking(AsyncClient.validate_handle)
    rotate_handle = _blocking(AsyncClient.rotate_handle)
    remove_handle = _blocking(AsyncClient.remove_handle)
    get_handle_statistics = _blocking(AsyncClient.get_handle_statistics)
    # AdminService
    get_health = _blocking(AsyncClient.get_health)
    get_config = _blocking(AsyncClient.get_config)
    update_config = _blocking(AsyncClient.update_config)
    list_audit_events = _blocking(AsyncClient.list_audit_events)
    iter_audit_events = _blocking_iterator(AsyncClient.iter_audit_events)
    verify_audit_log = _blocking(AsyncClient.verify_audit_log)
    create_access_token = _blocking(AsyncClient.create_access_token)
    list_access_tokens = _blocking(AsyncClient.list_access_tokens)
    revoke_access_token = _blocking(AsyncClient.revoke_access_token)
    # Both services' WatchExpiring
    watch_expiring = _blocking_watch(AsyncClient.watch_expiring)
