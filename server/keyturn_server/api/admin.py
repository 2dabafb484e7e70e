"""AdminService: health, configuration, audit log and access tokens."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from keyturn.v1 import admin_pb2, admin_pb2_grpc
from keyturn_server import __version__
from keyturn_server.api import auth
from keyturn_server.api.config_messages import config_message, draft_from
from keyturn_server.api.convert import (
    ROLE_FROM,
    access_token_message,
    audit_message,
    dur,
    from_duration,
    from_ts,
    optional_enum,
    ts,
)
from keyturn_server.clock import Clock
from keyturn_server.domain.access_token_service import AccessTokenService
from keyturn_server.domain.audit import AuditQuery
from keyturn_server.domain.audit_service import AuditService
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.health import Component, HealthService, Serving

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_SERVING = {
    Serving.SERVING: admin_pb2.SERVING_STATUS_SERVING,
    Serving.NOT_SERVING: admin_pb2.SERVING_STATUS_NOT_SERVING,
}


def _component(part: Component) -> admin_pb2.ComponentHealth:
    message = admin_pb2.ComponentHealth(
        name=part.name, status=_SERVING[part.status], reasons=part.reasons
    )
    f = part.figures
    if part.name == "keys":
        message.keys.CopyFrom(admin_pb2.KeyHealth(**f))
    elif part.name == "handles":
        message.handles.CopyFrom(admin_pb2.HandleHealth(**f))
    elif part.name == "store":
        message.store.CopyFrom(
            admin_pb2.StoreHealth(
                backend=str(f["backend"]),
                writable=bool(f["writable"]),
                last_commit=dur(f["last_commit"]),
                pending_writes=int(f["pending_writes"]),
                schema_version=int(f["schema_version"]),
                reachable=bool(f["reachable"]),
                commits=int(f["commits"]),
                writes=int(f["writes"]),
            )
        )
    elif part.name == "scheduler":
        message.scheduler.CopyFrom(
            admin_pb2.SchedulerHealth(
                running=bool(f["running"]),
                lag=dur(f["lag"]),
                overdue=int(f["overdue"]),
                next_deadline=ts(f["next_deadline"]),
                leader=bool(f["leader"]),
                replica=str(f["replica"]),
                lease_holder=str(f["lease_holder"]),
                lease_epoch=int(f["lease_epoch"]),
            )
        )
    return message


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        health: HealthService,
        config: ConfigService,
        audit: AuditService,
        tokens: AccessTokenService,
        clock: Clock,
    ) -> None:
        self._health = health
        self._config = config
        self._audit = audit
        self._tokens = tokens
        self._clock = clock

    async def GetHealth(
        self, request: admin_pb2.GetHealthRequest, context: Context
    ) -> admin_pb2.GetHealthResponse:
        report = await self._health.check(auth.current(), request.component, self._clock.now())
        return admin_pb2.GetHealthResponse(
            health=admin_pb2.Health(
                status=_SERVING[report.status],
                time=ts(report.time),
                version=__version__,
                uptime=dur(report.uptime),
                components=[_component(c) for c in report.components],
            )
        )

    async def GetConfig(
        self, request: admin_pb2.GetConfigRequest, context: Context
    ) -> admin_pb2.Config:
        return config_message(self._config.get(auth.current()))

    async def UpdateConfig(
        self, request: admin_pb2.UpdateConfigRequest, context: Context
    ) -> admin_pb2.Config:
        mask = list(request.update_mask.paths)
        updated = await self._config.update(
            auth.current(),
            draft_from(request.config, mask),
            mask,
            request.etag,
            request.user_id,
            request.reason,
        )
        return config_message(updated)

    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: Context
    ) -> admin_pb2.ListAuditEventsResponse:
        query = AuditQuery(
            action=request.action,
            principal=request.principal,
            resource_id=request.resource_id,
            start=from_ts(request.start_time, request.HasField("start_time"), "start_time"),
            end=from_ts(request.end_time, request.HasField("end_time"), "end_time"),
            descending=request.descending,
        )
        page = await self._audit.list_entries(
            auth.current(), query, request.page_size, request.page_token
        )
        return admin_pb2.ListAuditEventsResponse(
            events=[audit_message(e) for e in page.entries],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def VerifyAuditLog(
        self, request: admin_pb2.VerifyAuditLogRequest, context: Context
    ) -> admin_pb2.VerifyAuditLogResponse:
        result = await self._audit.verify(auth.current())
        return admin_pb2.VerifyAuditLogResponse(
            valid=result.valid,
            entries_checked=result.checked,
            first_broken_sequence=result.first_broken,
            problem=result.problem,
            head_hash=result.head,
            first_sequence=result.first_sequence,
        )

    async def CreateAccessToken(
        self, request: admin_pb2.CreateAccessTokenRequest, context: Context
    ) -> admin_pb2.CreateAccessTokenResponse:
        role = optional_enum(ROLE_FROM, request.role, "role")
        ttl = from_duration(request.ttl, "ttl") if request.HasField("ttl") else None
        token, secret = await self._tokens.create(
            auth.current(), request.name, role, ttl, request.user_id
        )
        return admin_pb2.CreateAccessTokenResponse(
            access_token=access_token_message(token), token=secret
        )

    async def ListAccessTokens(
        self, request: admin_pb2.ListAccessTokensRequest, context: Context
    ) -> admin_pb2.ListAccessTokensResponse:
        found = self._tokens.list_tokens(auth.current(), request.include_revoked)
        return admin_pb2.ListAccessTokensResponse(
            access_tokens=[access_token_message(t) for t in found]
        )

    async def RevokeAccessToken(
        self, request: admin_pb2.RevokeAccessTokenRequest, context: Context
    ) -> admin_pb2.AccessToken:
        token = await self._tokens.revoke(
            auth.current(), request.name, request.user_id, request.reason
        )
        return access_token_message(token)
