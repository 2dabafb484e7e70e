"""KeyService calls: key lifecycle, statistics, and cryptographic use in place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TypeAlias

from keyturn._calls import Caller, enum_value, pages
from keyturn.v1 import keys_pb2, resources_pb2

KeyStatusLike: TypeAlias = "resources_pb2.KeyStatus.ValueType | str | None"


class KeyCalls(Caller):
    async def generate_key(
        self,
        type: str,
        *,
        metadata: Mapping[str, str] | None = None,
        user_id: str = "",
        reveal: bool = False,
        timeout: float | None = None,
    ) -> keys_pb2.GenerateKeyResponse:
        """A new key of ``type`` ("encryption", "signing", "session", "api" or custom);
        ``reveal`` also returns the material of exportable types."""
        request = keys_pb2.GenerateKeyRequest(
            type=type, metadata=metadata or {}, user_id=user_id, reveal=reveal
        )
        return await self._call(self._keys.GenerateKey, request, timeout)

    async def get_key(self, key_id: str, *, timeout: float | None = None) -> resources_pb2.Key:
        return await self._call(self._keys.GetKey, keys_pb2.GetKeyRequest(key_id=key_id), timeout)

    async def list_keys(
        self,
        *,
        type: str = "",
        status: KeyStatusLike = None,
        owner: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> keys_pb2.ListKeysResponse:
        """One page of keys; see ``iter_keys`` for all of them."""
        request = keys_pb2.ListKeysRequest(
            type=type,
            status=enum_value(resources_pb2.KeyStatus, "KEY_STATUS", status),
            owner=owner,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self._keys.ListKeys, request, timeout)

    def iter_keys(
        self,
        *,
        type: str = "",
        status: KeyStatusLike = None,
        owner: str = "",
        page_size: int = 0,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[resources_pb2.Key]:
        """Every matching key (at most ``limit``), page after page, as they are needed;
        ``timeout`` bounds each page's call."""

        async def fetch(token: str) -> keys_pb2.ListKeysResponse:
            return await self.list_keys(
                type=type,
                status=status,
                owner=owner,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )

        return pages(fetch, lambda r: r.keys, lambda r: r.next_page_token, limit)

    async def rotate_key(
        self,
        key_id: str,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Key:
        """Adds a new primary version; older versions keep decrypting and verifying."""
        request = keys_pb2.RotateKeyRequest(key_id=key_id, user_id=user_id, reason=reason)
        return await self._call(self._keys.RotateKey, request, timeout)

    async def remove_key(
        self,
        key_id: str,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Key:
        """Schedules destruction after the server's waiting period."""
        request = keys_pb2.RemoveKeyRequest(key_id=key_id, user_id=user_id, reason=reason)
        return await self._call(self._keys.RemoveKey, request, timeout)

    async def restore_key(
        self,
        key_id: str,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Key:
        """Cancels a scheduled destruction."""
        request = keys_pb2.RestoreKeyRequest(key_id=key_id, user_id=user_id, reason=reason)
        return await self._call(self._keys.RestoreKey, request, timeout)

    async def disable_key_version(
        self,
        key_id: str,
        version: int,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Key:
        """Refuses every use of one non-primary version (a suspected compromise) until
        it is enabled again; a repeat changes nothing."""
        request = keys_pb2.DisableKeyVersionRequest(
            key_id=key_id, version=version, user_id=user_id, reason=reason
        )
        return await self._call(self._keys.DisableKeyVersion, request, timeout)

    async def enable_key_version(
        self,
        key_id: str,
        version: int,
        *,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> resources_pb2.Key:
        """Lets a disabled version be used again, until its max lifetime."""
        request = keys_pb2.EnableKeyVersionRequest(
            key_id=key_id, version=version, user_id=user_id, reason=reason
        )
        return await self._call(self._keys.EnableKeyVersion, request, timeout)

    async def get_key_statistics(
        self, *, timeout: float | None = None
    ) -> keys_pb2.GetKeyStatisticsResponse:
        request = keys_pb2.GetKeyStatisticsRequest()
        return await self._call(self._keys.GetKeyStatistics, request, timeout)

    async def export_key(
        self,
        key_id: str,
        *,
        version: int = 0,
        user_id: str = "",
        reason: str = "",
        timeout: float | None = None,
    ) -> keys_pb2.ExportKeyResponse:
        """The material of an exportable key's version (0: the primary). Audited."""
        request = keys_pb2.ExportKeyRequest(
            key_id=key_id, version=version, user_id=user_id, reason=reason
        )
        return await self._call(self._keys.ExportKey, request, timeout)

    async def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        associated_data: bytes = b"",
        timeout: float | None = None,
    ) -> keys_pb2.EncryptResponse:
        request = keys_pb2.EncryptRequest(
            key_id=key_id, plaintext=plaintext, associated_data=associated_data
        )
        return await self._call(self._keys.Encrypt, request, timeout)

    async def decrypt(
        self,
        key_id: str,
        ciphertext: bytes,
        *,
        associated_data: bytes = b"",
        timeout: float | None = None,
    ) -> keys_pb2.DecryptResponse:
        request = keys_pb2.DecryptRequest(
            key_id=key_id, ciphertext=ciphertext, associated_data=associated_data
        )
        return await self._call(self._keys.Decrypt, request, timeout)

    async def sign(
        self, key_id: str, data: bytes, *, timeout: float | None = None
    ) -> keys_pb2.SignResponse:
        request = keys_pb2.SignRequest(key_id=key_id, data=data)
        return await self._call(self._keys.Sign, request, timeout)

    async def verify(
        self, key_id: str, data: bytes, signature: bytes, *, timeout: float | None = None
    ) -> keys_pb2.VerifyResponse:
        request = keys_pb2.VerifyRequest(key_id=key_id, data=data, signature=signature)
        return await self._call(self._keys.Verify, request, timeout)

    async def get_public_key(
        self,
        key_id: str,
        *,
        version: int = 0,
        timeout: float | None = None,
    ) -> keys_pb2.GetPublicKeyResponse:
        request = keys_pb2.GetPublicKeyRequest(key_id=key_id, version=version)
        return await self._call(self._keys.GetPublicKey, request, timeout)

    async def compute_mac(
        self, key_id: str, data: bytes, *, timeout: float | None = None
    ) -> keys_pb2.ComputeMacResponse:
        request = keys_pb2.ComputeMacRequest(key_id=key_id, data=data)
        return await self._call(self._keys.ComputeMac, request, timeout)

    async def verify_mac(
        self, key_id: str, data: bytes, mac: bytes, *, timeout: float | None = None
    ) -> keys_pb2.VerifyMacResponse:
        request = keys_pb2.VerifyMacRequest(key_id=key_id, data=data, mac=mac)
        return await self._call(self._keys.VerifyMac, request, timeout)
