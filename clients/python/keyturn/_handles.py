"""HandleService calls: workflow handles (a public id and a secret token shown once)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TypeAlias

from keyturn._calls import Caller, enum_value, pages
from keyturn.v1 import handles_pb2, resources_pb2

HandleStatusLike: TypeAlias = "resources_pb2.HandleStatus.ValueType | str | None"


class HandleCalls(Caller):
    async def generate_handle(
        self,
        type: str,
        *,
        context: Mapping[str, str] | None = None,
        user_id: str = "",
        timeout: float | None = None,
    ) -> handles_pb2.GenerateHandleResponse:
        """A new handle of ``type`` ("session", "workflow", "api", "device" or custom) and
        its secret ``token``, which the server shows only this once. ``ip`` and
        ``user_agent`` in ``context`` bind the handle to them."""
        request = handles_pb2.GenerateHandleRequest(
            type=type, context=context or {}, user_id=user_id
        )
        return await self._call(self._handles.GenerateHandle, request, timeout)

    async def get_handle(
        self, handle_id: str, *, timeout: float | None = None
    ) -> resources_pb2.Handle:
        request = handles_pb2.GetHandleRequest(handle_id=handle_id)
        return await self._call(self._handles.GetHandle, request, timeout)

    async def list_handles(
        self,
        *,
        type: str = "",
        status: HandleStatusLike = None,
        owner: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> handles_pb2.ListHandlesResponse:
        """One page of handles; see ``iter_handles`` for all of them."""
        request = handles_pb2.ListHandlesRequest(
            type=type,
            status=enum_value(resources_pb2.HandleStatus, "HANDLE_STATUS", status),
            owner=owner,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self._handles.ListHandles, request, timeout)

    def iter_handles(
        self,
        *,
        type: str = "",
        status: HandleStatusLike = None,
        owner: str = "",
        page_size: int = 0,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[resources_pb2.Handle]:
        """Every matching handle (at most ``limit``), page after page; ``timeout`` bounds
        each page's call."""

        async def fetch(token: str) -> handles_pb2.ListHandlesResponse:
            return await self.list_handles(
                type=type,
                status=status,
                owner=owner,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )

        return pages(fetch, lambda r: r.handles, lambda r: r.next_page_token, limit)

    async def validate_handle(
        self,
        token: str,
        *,
        context: Mapping[str, str] | None = None,
        user_id: str = "",
        timeout: float | None = None,
    ) -> handles_pb2.ValidateHandleResponse:
        """Checks ``token`` and counts the use. A refusal is data (``validation.valid`` is
        false, with a ``reason``), not an exception. Never retried: each call counts."""
        request = handles_pb2.ValidateHandleRequest(
            token=token, context=context or {}, user_id=user_id
        )
        return await self._call(self._handles.ValidateHandle, request, timeout)

    async def rotate_handle(
        self,
        handle_id: str = "",
        *,
        token: str = "",
        context: Mapping[str, str] | None = None,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> handles_pb2.RotateHandleResponse:
        """A new secret for the handle named by id, or by its current (or previous, inside
        the grace period) ``token``; the previous secret keeps validating until
        ``previous_valid_until``. By token, ``context`` (ip, user_agent) must match the
        handle's bound context, as for a validation."""
        if bool(handle_id) == bool(token):
            raise ValueError("rotate_handle takes exactly one of handle_id and token")
        request = handles_pb2.RotateHandleRequest(user_id=user_id, reason=reason)
        if handle_id:
            request.handle_id = handle_id
        else:
            request.token = token
            request.context.update(context or {})
        return await self._call(self._handles.RotateHandle, request, timeout)

    async def remove_handle(
        self,
        handle_id: str,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Handle:
        """Revokes the handle at once."""
        request = handles_pb2.RemoveHandleRequest(
            handle_id=handle_id, user_id=user_id, reason=reason
        )
        return await self._call(self._handles.RemoveHandle, request, timeout)

    async def get_handle_statistics(
        self, *, timeout: float | None = None
    ) -> handles_pb2.GetHandleStatisticsResponse:
        request = handles_pb2.GetHandleStatisticsRequest()
        return await self._call(self._handles.GetHandleStatistics, request, timeout)
