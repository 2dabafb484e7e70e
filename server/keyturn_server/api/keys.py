"""KeyService: proto in, domain call, proto out. No rules live here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from keyturn.v1 import events_pb2, keys_pb2, keys_pb2_grpc, resources_pb2, statistics_pb2
from keyturn_server.api import auth
from keyturn_server.api.convert import (
    KEY_STATUS_FROM,
    key_message,
    latency,
    optional_enum,
    recent_counts,
    ts,
)
from keyturn_server.api.watch import StreamEncoder, watch_request
from keyturn_server.clock import Clock
from keyturn_server.domain.events import Subject
from keyturn_server.domain.key_service import KeyService
from keyturn_server.domain.statistics import Report, Statistics
from keyturn_server.domain.watch import WatchService

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(
        self,
        keys: KeyService,
        watch: WatchService,
        encoder: StreamEncoder,
        statistics: Callable[[], Awaitable[Statistics]],
        clock: Clock,
    ) -> None:
        self._keys = keys
        self._watch = watch
        self._encoder = encoder
        #: Every worker's counts under --workers (process/figures.py), else this one's.
        self._statistics = statistics
        self._clock = clock

    def _key(self, key: object) -> resources_pb2.Key:
        return key_message(key, self._clock.now())  # type: ignore[arg-type]

    async def GenerateKey(
        self, request: keys_pb2.GenerateKeyRequest, context: Context
    ) -> keys_pb2.GenerateKeyResponse:
        key, material = await self._keys.generate(
            auth.current(), request.type, dict(request.metadata), request.user_id, request.reveal
        )
        return keys_pb2.GenerateKeyResponse(key=self._key(key), material=material or b"")

    async def GetKey(self, request: keys_pb2.GetKeyRequest, context: Context) -> resources_pb2.Key:
        return self._key(self._keys.get(auth.current(), request.key_id))

    async def ListKeys(
        self, request: keys_pb2.ListKeysRequest, context: Context
    ) -> keys_pb2.ListKeysResponse:
        status = optional_enum(KEY_STATUS_FROM, request.status, "status")
        page = await self._keys.list_keys(
            auth.current(),
            request.type,
            status,
            request.owner,
            request.page_size,
            request.page_token,
        )
        return keys_pb2.ListKeysResponse(
            keys=[self._key(k) for k in page.keys],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def RotateKey(
        self, request: keys_pb2.RotateKeyRequest, context: Context
    ) -> resources_pb2.Key:
        key = await self._keys.rotate(
            auth.current(), request.key_id, request.user_id, request.reason
        )
        return self._key(key)

    async def RemoveKey(
        self, request: keys_pb2.RemoveKeyRequest, context: Context
    ) -> resources_pb2.Key:
        key = await self._keys.remove(
            auth.current(), request.key_id, request.user_id, request.reason
        )
        return self._key(key)

    async def RestoreKey(
        self, request: keys_pb2.RestoreKeyRequest, context: Context
    ) -> resources_pb2.Key:
        key = await self._keys.restore(
            auth.current(), request.key_id, request.user_id, request.reason
        )
        return self._key(key)

    async def DisableKeyVersion(
        self, request: keys_pb2.DisableKeyVersionRequest, context: Context
    ) -> resources_pb2.Key:
        key = await self._keys.disable_version(
            auth.current(), request.key_id, request.version, request.user_id, request.reason
        )
        return self._key(key)

    async def EnableKeyVersion(
        self, request: keys_pb2.EnableKeyVersionRequest, context: Context
    ) -> resources_pb2.Key:
        key = await self._keys.enable_version(
            auth.current(), request.key_id, request.version, request.user_id, request.reason
        )
        return self._key(key)

    async def GetKeyStatistics(
        self, request: keys_pb2.GetKeyStatisticsRequest, context: Context
    ) -> keys_pb2.GetKeyStatisticsResponse:
        report = await self._keys.statistics(auth.current())
        stats = await self._statistics()
        return keys_pb2.GetKeyStatisticsResponse(statistics=self._message(report, stats))

    def _message(self, report: Report, stats: Statistics) -> statistics_pb2.KeyStatistics:
        message = statistics_pb2.KeyStatistics(
            time=ts(report.time),
            total=report.total,
            by_status=dict(report.by_status),
            rotations=recent_counts(report.rotations),
            expirations=recent_counts(report.expirations),
            generated=recent_counts(report.generated),
            operations=dict(stats.operations),
            generate_latency=latency(stats.summary("generate_key")),
            use_latency=latency(stats.summary("use_key")),
            errors=stats.errors["keyturn.v1.KeyService"],
            requests=stats.requests["keyturn.v1.KeyService"],
            integrity_failures=stats.integrity_failures,
        )
        for name, counts in report.by_type.items():
            message.by_type[name].CopyFrom(
                statistics_pb2.KeyTypeStatistics(
                    total=counts.total,
                    by_status=dict(counts.by_status),
                    usage_count=counts.usage,
                    versions=counts.versions,
                )
            )
        return message

    async def ExportKey(
        self, request: keys_pb2.ExportKeyRequest, context: Context
    ) -> keys_pb2.ExportKeyResponse:
        material, version, algorithm = await self._keys.export(
            auth.current(), request.key_id, request.version, request.user_id, request.reason
        )
        return keys_pb2.ExportKeyResponse(
            material=material, key_version=version, algorithm=algorithm
        )

    async def Encrypt(
        self, request: keys_pb2.EncryptRequest, context: Context
    ) -> keys_pb2.EncryptResponse:
        ciphertext, version = await self._keys.encrypt(
            auth.current(), request.key_id, request.plaintext, request.associated_data
        )
        return keys_pb2.EncryptResponse(ciphertext=ciphertext, key_version=version)

    async def Decrypt(
        self, request: keys_pb2.DecryptRequest, context: Context
    ) -> keys_pb2.DecryptResponse:
        plaintext, version, primary = self._keys.decrypt(
            auth.current(), request.key_id, request.ciphertext, request.associated_data
        )
        return keys_pb2.DecryptResponse(
            plaintext=plaintext, key_version=version, used_primary=primary
        )

    async def Sign(self, request: keys_pb2.SignRequest, context: Context) -> keys_pb2.SignResponse:
        signature, raw, version, algorithm = await self._keys.sign(
            auth.current(), request.key_id, request.data
        )
        return keys_pb2.SignResponse(
            signature=signature, raw_signature=raw, key_version=version, algorithm=algorithm
        )

    async def Verify(
        self, request: keys_pb2.VerifyRequest, context: Context
    ) -> keys_pb2.VerifyResponse:
        valid, version = self._keys.verify(
            auth.current(), request.key_id, request.data, request.signature
        )
        return keys_pb2.VerifyResponse(valid=valid, key_version=version)

    async def GetPublicKey(
        self, request: keys_pb2.GetPublicKeyRequest, context: Context
    ) -> keys_pb2.GetPublicKeyResponse:
        pem, algorithm, version = self._keys.public_key(
            auth.current(), request.key_id, request.version
        )
        return keys_pb2.GetPublicKeyResponse(pem=pem, algorithm=algorithm, key_version=version)

    async def ComputeMac(
        self, request: keys_pb2.ComputeMacRequest, context: Context
    ) -> keys_pb2.ComputeMacResponse:
        mac, version = self._keys.mac(auth.current(), request.key_id, request.data)
        return keys_pb2.ComputeMacResponse(mac=mac, key_version=version)

    async def VerifyMac(
        self, request: keys_pb2.VerifyMacRequest, context: Context
    ) -> keys_pb2.VerifyMacResponse:
        valid, version = self._keys.verify_mac(
            auth.current(), request.key_id, request.data, request.mac
        )
        return keys_pb2.VerifyMacResponse(valid=valid, key_version=version)

    async def WatchExpiring(
        self, request: events_pb2.WatchExpiringRequest, context: Context
    ) -> AsyncIterator[events_pb2.ExpiryEvent]:
        request_ = watch_request(Subject.KEY, request)
        async with contextlib.aclosing(self._watch.watch(auth.current(), request_)) as items:
            # Accepted (rights, filters and resume point checked): headers go out now, so
            # that the caller knows before the first event; HTTP starts its SSE response.
            await context.send_initial_metadata(())
            async for item in items:
                yield self._encoder.message(item)
