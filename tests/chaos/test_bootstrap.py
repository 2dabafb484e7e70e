"""Replicas started at once on an empty database, and configuration changed on several
replicas at once: one keyring, one admin token, one configuration, and a lost race is
ABORTED, never INTERNAL."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from keyturn.v1 import admin_pb2, keys_pb2
from tests.chaos.conftest import ReplicaFactory
from tests.chaos.postgres import Cluster
from tests.chaos.replicas import admin_token, start_all
from tests.harness import failure

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
ROUNDS = int(os.environ.get("KEYTURN_CHAOS_BOOTSTRAP_ROUNDS", "5"))


async def test_three_replicas_started_at_once_share_one_keyring_token_and_config(
    cluster: Cluster, make_replicas: ReplicaFactory, record_property: pytest.RecordProperty
) -> None:
    for round_ in range(ROUNDS):
        database = cluster.create_database()
        replicas = make_replicas(3, cluster.url(database))
        for replica in replicas:
            replica.env["LOG_LEVEL"] = "info"  # where the admin token is, said at start
        await start_all(replicas)
        token = admin_token(replicas)  # exactly one replica created (and wrote) it
        for replica in replicas:
            replica.connect(token)
        for replica in replicas:
            if not (replica.data_dir / "admin.token").exists():
                log = replica.log.read_text()
                assert "admin token" in log and "another replica" in log, log[-2000:]

        [(admins,)] = cluster.query(database, "SELECT COUNT(*) FROM access_tokens")
        assert admins == 1
        [(keyrings,)] = cluster.query(
            database, "SELECT COUNT(*) FROM meta WHERE name LIKE 'keyring.wrap.%%'"
        )
        assert keyrings == 1
        [(revisions,)] = cluster.query(database, "SELECT COUNT(*) FROM config")
        assert revisions == 1
        etags = {(await r.api.admin.GetConfig(admin_pb2.GetConfigRequest())).etag for r in replicas}
        assert len(etags) == 1

        # One keyring: what any replica seals, every other opens.
        for maker in replicas:
            key = await maker.api.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
            sealed = await maker.api.keys.Encrypt(
                keys_pb2.EncryptRequest(key_id=key.key.id, plaintext=b"round %d" % round_)
            )
            for other in replicas:
                opened = await other.api.keys.Decrypt(
                    keys_pb2.DecryptRequest(key_id=key.key.id, ciphertext=sealed.ciphertext)
                )
                assert opened.plaintext == b"round %d" % round_
        for replica in replicas:
            await replica.close()
        codes = await asyncio.gather(*(asyncio.to_thread(r.terminate) for r in replicas))
        assert codes == [0, 0, 0]  # and each stops cleanly
    record_property(
        "figures", f"chaos: {ROUNDS} simultaneous starts of 3 replicas on an empty database"
    )


async def test_concurrent_config_updates_on_three_replicas_give_one_winner_and_aborted(
    cluster: Cluster, database: str, make_replicas: ReplicaFactory
) -> None:
    replicas = make_replicas(3, cluster.url(database))
    await start_all(replicas)
    token = admin_token(replicas)
    for replica in replicas:
        replica.connect(token)
    for round_ in range(20):
        etag = (await replicas[0].api.admin.GetConfig(admin_pb2.GetConfigRequest())).etag

        async def update(i: int, etag: str = etag, round_: int = round_) -> str:
            request = admin_pb2.UpdateConfigRequest(
                config=admin_pb2.Config(
                    security_policies=admin_pb2.SecurityPolicies(
                        rate_limit_per_handle=100 + round_ * 3 + i
                    )
                ),
                update_mask={"paths": ["security_policies.rate_limit_per_handle"]},
                etag=etag,
            )
            try:
                await replicas[i].api.admin.UpdateConfig(request)
            except grpc.aio.AioRpcError as error:
                lost = failure(error)
                assert lost.code is grpc.StatusCode.ABORTED, lost
                assert lost.reason == "ETAG_MISMATCH", lost
                return "ABORTED"
            return "OK"

        outcome = await asyncio.gather(*(update(i) for i in range(3)))
        assert sorted(outcome) == ["ABORTED", "ABORTED", "OK"], outcome
    [(revisions,)] = cluster.query(database, "SELECT COUNT(*) FROM config")
    assert revisions == 21
