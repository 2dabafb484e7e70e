"""AdminService calls: health, configuration, the audit log and access tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TypeAlias

from google.protobuf import field_mask_pb2, timestamp_pb2

from keyturn._calls import Caller, enum_value, pages
from keyturn.v1 import admin_pb2, resources_pb2

RoleLike: TypeAlias = "resources_pb2.Role.ValueType | str"


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


class AdminCalls(Caller):
    async def get_health(
        self, component: str = "", *, timeout: float | None = None
    ) -> admin_pb2.GetHealthResponse:
        """Health of everything, or of one component ("keys", "handles", "store",
        "scheduler")."""
        request = admin_pb2.GetHealthRequest(component=component)
        return await self._call(self._admin.GetHealth, request, timeout)

    async def get_config(self, *, timeout: float | None = None) -> admin_pb2.Config:
        return await self._call(self._admin.GetConfig, admin_pb2.GetConfigRequest(), timeout)

    async def update_config(
        self,
        config: admin_pb2.Config,
        *,
        etag: str,
        update_mask: Sequence[str] = (),
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.Config:
        """Applies ``config`` at the paths of ``update_mask`` (e.g. "key_types.custom",
        "security_policies.rate_limit_per_handle"; empty: everything given). ``etag`` is
        the one of the configuration it was based on: a stale one raises Aborted."""
        request = admin_pb2.UpdateConfigRequest(
            config=config,
            update_mask=field_mask_pb2.FieldMask(paths=list(update_mask)),
            etag=etag,
            user_id=user_id,
            reason=reason,
        )
        return await self._call(self._admin.UpdateConfig, request, timeout)

    async def list_audit_events(
        self,
        *,
        action: str = "",
        principal: str = "",
        resource_id: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        descending: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.ListAuditEventsResponse:
        """One page of the audit log; see ``iter_audit_events`` for all of it."""
        request = admin_pb2.ListAuditEventsRequest(
            action=action,
            principal=principal,
            resource_id=resource_id,
            start_time=_timestamp(start_time),
            end_time=_timestamp(end_time),
            descending=descending,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self._admin.ListAuditEvents, request, timeout)

    def iter_audit_events(
        self,
        *,
        action: str = "",
        principal: str = "",
        resource_id: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        descending: bool = False,
        page_size: int = 0,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[admin_pb2.AuditEvent]:
        """Every matching audit event (at most ``limit``), page after page; ``timeout``
        bounds each page's call."""

        async def fetch(token: str) -> admin_pb2.ListAuditEventsResponse:
            return await self.list_audit_events(
                action=action,
                principal=principal,
                resource_id=resource_id,
                start_time=start_time,
                end_time=end_time,
                descending=descending,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )

        return pages(fetch, lambda r: r.events, lambda r: r.next_page_token, limit)

    async def verify_audit_log(
        self, *, timeout: float | None = None
    ) -> admin_pb2.VerifyAuditLogResponse:
        """Walks the hash chain; ``valid`` is false with the first broken link."""
        request = admin_pb2.VerifyAuditLogRequest()
        return await self._call(self._admin.VerifyAuditLog, request, timeout)

    async def create_access_token(
        self,
        name: str,
        role: RoleLike,
        *,
        ttl: timedelta | None = None,
        user_id: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.CreateAccessTokenResponse:
        """A bearer token for principal ``name`` with ``role`` ("admin", "operator",
        "service", "auditor"); its secret is in ``token``, shown once."""
        request = admin_pb2.CreateAccessTokenRequest(
            name=name, role=enum_value(resources_pb2.Role, "ROLE", role), user_id=user_id
        )
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        return await self._call(self._admin.CreateAccessToken, request, timeout)

    async def list_access_tokens(
        self,
        *,
        include_revoked: bool = False,
        timeout: float | None = None,
    ) -> admin_pb2.ListAccessTokensResponse:
        request = admin_pb2.ListAccessTokensRequest(include_revoked=include_revoked)
        return await self._call(self._admin.ListAccessTokens, request, timeout)

    async def revoke_access_token(
        self,
        name: str,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.AccessToken:
        request = admin_pb2.RevokeAccessTokenRequest(name=name, user_id=user_id, reason=reason)
        return await self._call(self._admin.RevokeAccessToken, request, timeout)
