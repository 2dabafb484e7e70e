"""HandleService: proto in, domain call, proto out. No rules live here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from keyturn.v1 import events_pb2, handles_pb2, handles_pb2_grpc, resources_pb2, statistics_pb2
from keyturn_server.api import auth
from keyturn_server.api.convert import (
    HANDLE_STATUS_FROM,
    fill_validation,
    handle_message,
    latency,
    optional_enum,
    recent_counts,
    ts,
)
from keyturn_server.api.watch import StreamEncoder, watch_request
from keyturn_server.clock import Clock
from keyturn_server.domain.events import Subject
from keyturn_server.domain.handle_service import HandleService
from keyturn_server.domain.handles import Handle
from keyturn_server.domain.statistics import Statistics
from keyturn_server.domain.watch import WatchService
from keyturn_server.observability import access

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
SERVICE = "keyturn.v1.HandleService"


class HandleServicer(handles_pb2_grpc.HandleServiceServicer):
    def __init__(
        self,
        handles: HandleService,
        watch: WatchService,
        encoder: StreamEncoder,
        statistics: Callable[[], Awaitable[Statistics]],
        clock: Clock,
    ) -> None:
        self._handles = handles
        self._watch = watch
        self._encoder = encoder
        #: Every worker's counts under --workers (process/figures.py), else this one's.
        self._statistics = statistics
        self._clock = clock

    def _handle(self, handle: Handle) -> resources_pb2.Handle:
        return handle_message(handle, self._clock.now())

    async def GenerateHandle(
        self, request: handles_pb2.GenerateHandleRequest, context: Context
    ) -> handles_pb2.GenerateHandleResponse:
        handle, token = await self._handles.generate(
            auth.current(), request.type, dict(request.context), request.user_id
        )
        return handles_pb2.GenerateHandleResponse(handle=self._handle(handle), token=token)

    async def GetHandle(
        self, request: handles_pb2.GetHandleRequest, context: Context
    ) -> resources_pb2.Handle:
        return self._handle(self._handles.get(auth.current(), request.handle_id))

    async def ListHandles(
        self, request: handles_pb2.ListHandlesRequest, context: Context
    ) -> handles_pb2.ListHandlesResponse:
        status = optional_enum(HANDLE_STATUS_FROM, request.status, "status")
        page = await self._handles.list_handles(
            auth.current(),
            request.type,
            status,
            request.owner,
            request.page_size,
            request.page_token,
        )
        return handles_pb2.ListHandlesResponse(
            handles=[self._handle(h) for h in page.handles],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def ValidateHandle(
        self, request: handles_pb2.ValidateHandleRequest, context: Context
    ) -> handles_pb2.ValidateHandleResponse:
        result = await self._handles.validate(
            auth.current(),
            request.token,
            dict(request.context) if request.context else {},
            request.user_id,
        )
        if not result.valid:
            access.refused(result.reason.value if result.reason else "INVALID")
        response = handles_pb2.ValidateHandleResponse()
        fill_validation(response.validation, result)
        return response

    async def RotateHandle(
        self, request: handles_pb2.RotateHandleRequest, context: Context
    ) -> handles_pb2.RotateHandleResponse:
        rotation = await self._handles.rotate(
            auth.current(),
            request.handle_id,
            request.token,
            request.user_id,
            request.reason,
            dict(request.context),
        )
        return handles_pb2.RotateHandleResponse(
            handle=self._handle(rotation.handle),
            token=rotation.token,
            previous_valid_until=ts(rotation.previous_valid_until),
        )

    async def RemoveHandle(
        self, request: handles_pb2.RemoveHandleRequest, context: Context
    ) -> resources_pb2.Handle:
        handle = await self._handles.remove(
            auth.current(), request.handle_id, request.user_id, request.reason
        )
        return self._handle(handle)

    async def GetHandleStatistics(
        self, request: handles_pb2.GetHandleStatisticsRequest, context: Context
    ) -> handles_pb2.GetHandleStatisticsResponse:
        report, anomalies = await self._handles.statistics(auth.current())
        stats = await self._statistics()
        message = statistics_pb2.HandleStatistics(
            time=ts(report.time),
            total=report.total,
            by_status=dict(report.by_status),
            validations=stats.validations,
            validations_succeeded=stats.validations_succeeded,
            failures_by_reason=dict(stats.failures_by_reason),
            anomalies_by_kind=anomalies,
            rotations=recent_counts(report.rotations),
            expirations=recent_counts(report.expirations),
            generated=recent_counts(report.generated),
            validate_latency=latency(stats.summary("validate")),
            generate_latency=latency(stats.summary("generate_handle")),
            errors=stats.errors[SERVICE],
            requests=stats.requests[SERVICE],
        )
        for name, counts in report.by_type.items():
            message.by_type[name].CopyFrom(
                statistics_pb2.HandleTypeStatistics(
                    total=counts.total,
                    by_status=dict(counts.by_status),
                    total_usage=counts.usage,
                    average_usage=counts.usage / counts.total if counts.total else 0.0,
                    max_usage=counts.top_usage,
                )
            )
        return handles_pb2.GetHandleStatisticsResponse(statistics=message)

    async def WatchExpiring(
        self, request: events_pb2.WatchExpiringRequest, context: Context
    ) -> AsyncIterator[events_pb2.ExpiryEvent]:
        request_ = watch_request(Subject.HANDLE, request)
        async with contextlib.aclosing(self._watch.watch(auth.current(), request_)) as items:
            # Accepted (rights, filters and resume point checked): headers go out now, so
            # that the caller knows before the first event; HTTP starts its SSE response.
            await context.send_initial_metadata(())
            async for item in items:
                yield self._encoder.message(item)
