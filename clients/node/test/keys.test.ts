/** KeyService through KeyturnClient, against the live server. */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { FailedPreconditionError, KeyStatus, KeyVersionState } from "../src/index.js";
import { adminClient } from "./support/live.js";

const client = adminClient();
after(() => client.close());

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (data: Uint8Array): string => new TextDecoder().decode(data);

describe("keys", () => {
  test("a generated encryption key is active with version 1 as primary, and reads back the same", async () => {
    const { key } = await client.keys.generateKey({
      type: "encryption",
      metadata: { purpose: "data-encryption", environment: "test" },
      userId: "user123",
    });
    assert.ok(key);
    assert.match(key.id, /^key_/);
    assert.equal(key.type, "encryption");
    assert.equal(key.status, KeyStatus.ACTIVE);
    assert.equal(key.primaryVersion, 1);
    assert.equal(key.metadata["purpose"], "data-encryption");

    const read = await client.keys.getKey({ keyId: key.id });
    assert.equal(read.id, key.id);
    assert.equal(read.createdFor, "user123");
    assert.deepEqual(read.metadata, key.metadata);
  });

  test("a listed page of encryption keys contains a key just generated", async () => {
    const { key } = await client.keys.generateKey({ type: "encryption" });
    const ids: string[] = [];
    for await (const listed of client.keys.iterateKeys({ type: "encryption", pageSize: 100 })) {
      assert.equal(listed.type, "encryption");
      ids.push(listed.id);
    }
    assert.ok(ids.includes(key!.id));
  });

  test("rotation adds a primary version and older ciphertexts still decrypt", async () => {
    const { key } = await client.keys.generateKey({ type: "encryption" });
    const keyId = key!.id;
    const aad = bytes("record-7");
    const sealed = await client.keys.encrypt({ keyId, plaintext: bytes("attack at dawn"), associatedData: aad });
    assert.equal(sealed.keyVersion, 1);

    const rotated = await client.keys.rotateKey({ keyId, reason: "scheduled", userId: "user123" });
    assert.equal(rotated.primaryVersion, 2);
    assert.deepEqual(
      rotated.versions.map((v) => [v.version, v.primary, v.state]),
      [
        [1, false, KeyVersionState.ENABLED],
        [2, true, KeyVersionState.ENABLED],
      ],
    );

    const opened = await client.keys.decrypt({ keyId, ciphertext: sealed.ciphertext, associatedData: aad });
    assert.equal(text(opened.plaintext), "attack at dawn");
    assert.equal(opened.keyVersion, 1);
    assert.equal(opened.usedPrimary, false);

    const fresh = await client.keys.encrypt({ keyId, plaintext: bytes("again") });
    assert.equal(fresh.keyVersion, 2);
    const reopened = await client.keys.decrypt({ keyId, ciphertext: fresh.ciphertext });
    assert.equal(text(reopened.plaintext), "again");
    assert.equal(reopened.usedPrimary, true);
  });

  test("a disabled version refuses to decrypt with VERSION_DISABLED until it is enabled again", async () => {
    const { key } = await client.keys.generateKey({ type: "encryption" });
    const keyId = key!.id;
    const sealed = await client.keys.encrypt({ keyId, plaintext: bytes("old secret") });
    assert.equal(sealed.keyVersion, 1);
    await client.keys.rotateKey({ keyId });

    const disabled = await client.keys.disableKeyVersion({ keyId, version: 1, reason: "suspected leak" });
    assert.deepEqual(
      disabled.versions.map((v) => [v.version, v.state]),
      [
        [1, KeyVersionState.DISABLED],
        [2, KeyVersionState.ENABLED],
      ],
    );
    await assert.rejects(client.keys.decrypt({ keyId, ciphertext: sealed.ciphertext }), (error) => {
      assert.ok(error instanceof FailedPreconditionError, String(error));
      assert.equal(error.reason, "VERSION_DISABLED");
      assert.equal(error.metadata["version"], "1");
      return true;
    });

    const enabled = await client.keys.enableKeyVersion({ keyId, version: 1, reason: "false alarm" });
    assert.equal(enabled.versions.find((v) => v.version === 1)?.state, KeyVersionState.ENABLED);
    const opened = await client.keys.decrypt({ keyId, ciphertext: sealed.ciphertext });
    assert.equal(text(opened.plaintext), "old secret");
    assert.equal(opened.keyVersion, 1);
  });

  test("a signature verifies for its message and not for another", async () => {
    const { key } = await client.keys.generateKey({ type: "signing" });
    const keyId = key!.id;
    const signed = await client.keys.sign({ keyId, data: bytes("release v1.2.3") });
    assert.equal(signed.keyVersion, 1);

    const good = await client.keys.verify({ keyId, data: bytes("release v1.2.3"), signature: signed.signature });
    assert.equal(good.valid, true);
    const bad = await client.keys.verify({ keyId, data: bytes("release v6.6.6"), signature: signed.signature });
    assert.equal(bad.valid, false);

    const publicKey = await client.keys.getPublicKey({ keyId });
    assert.match(publicKey.pem, /BEGIN PUBLIC KEY/);
  });

  test("a MAC from a session key verifies", async () => {
    const { key } = await client.keys.generateKey({ type: "session" });
    const keyId = key!.id;
    const { mac } = await client.keys.computeMac({ keyId, data: bytes("cookie") });
    assert.equal((await client.keys.verifyMac({ keyId, data: bytes("cookie"), mac })).valid, true);
    assert.equal((await client.keys.verifyMac({ keyId, data: bytes("cookies"), mac })).valid, false);
  });

  test("a removed key is restored before its destruction", async () => {
    const { key } = await client.keys.generateKey({ type: "encryption" });
    const removed = await client.keys.removeKey({ keyId: key!.id, reason: "test" });
    assert.equal(removed.status, KeyStatus.REMOVED);
    const restored = await client.keys.restoreKey({ keyId: key!.id, reason: "test" });
    assert.equal(restored.status, KeyStatus.ACTIVE);
  });

  test("key statistics count generated keys", async () => {
    const statistics = await client.keys.getKeyStatistics();
    assert.ok(statistics.total > 0n);
    assert.ok((statistics.byType["encryption"]?.total ?? 0n) > 0n);
  });
});
