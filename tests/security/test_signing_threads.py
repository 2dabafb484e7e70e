"""RSA signatures are made off the event loop, a bounded share of threads per caller.

Before, Sign ran its RSA private-key operation on the event loop (5.7 ms at 4,096 bits,
0.8 ms at 2,048): one service sending 32 Sign calls at once with a 4,096-bit key held
every other caller's calls behind its signatures (in process, another caller's
ValidateHandle p50 327 ms and p90 420 ms, against 6-8 ms and 16-40 ms now).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from keyturn.v1 import keys_pb2 as K
from keyturn_server.crypto.material import LoadedVersion
from tests.harness import Harness


async def test_an_rsa_signature_is_made_off_the_event_loop(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = await server.client_for("service", "signer")
    key = (await signer.keys.GenerateKey(K.GenerateKeyRequest(type="signing"))).key
    threads: list[int] = []
    sign = LoadedVersion.sign

    def recorded(self: LoadedVersion, data: bytes) -> bytes:
        threads.append(threading.get_ident())
        return sign(self, data)

    monkeypatch.setattr(LoadedVersion, "sign", recorded)
    signed = await signer.keys.Sign(K.SignRequest(key_id=key.id, data=b"invoice 42"))
    verified = await signer.keys.Verify(
        K.VerifyRequest(key_id=key.id, data=b"invoice 42", signature=signed.signature)
    )
    assert verified.valid
    assert threads and threading.get_ident() not in threads


async def test_one_callers_signatures_leave_threads_for_the_others(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    flooder = await server.client_for("service", "flooder")
    other = await server.client_for("service", "other")
    slow_key = (await flooder.keys.GenerateKey(K.GenerateKeyRequest(type="signing"))).key
    key = (await other.keys.GenerateKey(K.GenerateKeyRequest(type="signing"))).key
    release = threading.Event()
    sign = LoadedVersion.sign

    def slow(self: LoadedVersion, data: bytes) -> bytes:
        if self.key_id == slow_key.id:
            release.wait(1)  # as a very large key would be
        return sign(self, data)

    monkeypatch.setattr(LoadedVersion, "sign", slow)
    floods = [
        asyncio.create_task(
            flooder.keys.Sign(K.SignRequest(key_id=slow_key.id, data=b"x"), timeout=30)
        )
        for _ in range(8)
    ]
    try:
        await asyncio.sleep(0.3)
        signed = await other.keys.Sign(K.SignRequest(key_id=key.id, data=b"y"), timeout=3)
        assert signed.key_version == 1
    finally:
        release.set()
        answers = await asyncio.gather(*floods)
    assert all(a.signature for a in answers)
