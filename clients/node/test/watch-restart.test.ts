/**
 * A watch survives server restarts: it reconnects by itself, resumes from the last
 * sequence it saw, and the caller sees every event exactly once.
 *
 * These tests own their server (see support/server-process.ts) so that they can stop it
 * and start it again on the same data dir and port, once gracefully and once by a crash,
 * and change its configuration freely.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { EventKind, HandleStatus, KeyturnClient, type ExpiryEvent, type Reconnect } from "../src/index.js";
import { eventually } from "./support/live.js";
import { ServerProcess } from "./support/server-process.js";

let server: ServerProcess;

before(async () => {
  server = await ServerProcess.start();
});

after(async () => {
  await server?.dispose();
});

describe("watchExpiring across server restarts", () => {
  test("sequences stay consecutive with no duplicates through a graceful stop and a crash", async () => {
    const options = { address: server.address, token: server.adminToken };
    const watcher = new KeyturnClient(options);
    const actor = new KeyturnClient({ ...options, retry: { maxAttempts: 40, initialMs: 100, maxMs: 500 } });
    const stop = new AbortController();
    const reconnects: Reconnect[] = [];
    const watch = watcher.keys.watchExpiring({
      signal: stop.signal,
      onReconnect: (reconnect) => reconnects.push(reconnect),
    });
    const logged: ExpiryEvent[] = [];
    let snapshotEnd: bigint | undefined;
    const consumer = (async () => {
      for await (const event of watch) {
        if (event.kind === EventKind.SNAPSHOT_COMPLETE) snapshotEnd = event.latestSequence;
        else if (event.sequence > 0n) logged.push(event);
      }
    })();

    const expected: string[] = [];
    /** Two new keys and one rotation: three events, recorded as "KIND key_id". */
    const act = async (): Promise<void> => {
      for (let i = 0; i < 2; i++) {
        const { key } = await actor.keys.generateKey({ type: "encryption" });
        expected.push(`CREATED ${key!.id}`);
        if (i === 1) {
          await actor.keys.rotateKey({ keyId: key!.id, reason: "restart test" });
          expected.push(`ROTATED ${key!.id}`);
        }
      }
    };
    const caughtUp = (what: string): Promise<void> =>
      eventually(() => logged.length >= expected.length, 60_000, what);

    try {
      await eventually(() => snapshotEnd !== undefined, 10_000, "SNAPSHOT_COMPLETE");
      await act();
      await caughtUp("the events before any restart");

      // Graceful stop; events happen after the restart while the watch is still waiting
      // to reconnect, so it must replay them from its checkpoint.
      await server.restart();
      await act();
      await caughtUp("the events after a graceful restart");

      // A crash: nothing is drained, the connection just breaks.
      await server.stop("SIGKILL");
      const readWhileDown = actor.admin.getHealth().then(
        (health) => ({ health, error: undefined }),
        (error: unknown) => ({ health: undefined, error }),
      );
      await server.restart();
      const read = await readWhileDown;
      assert.equal(read.error, undefined, "an idempotent read is retried through the outage");
      await act();
      await caughtUp("the events after a crash");
    } finally {
      stop.abort();
      await consumer;
      await watcher.close();
      await actor.close();
    }

    const sequences = logged.map((e) => e.sequence);
    const first = snapshotEnd! + 1n;
    assert.deepEqual(
      sequences,
      sequences.map((_, i) => first + BigInt(i)),
      "consecutive from the snapshot's end, no duplicates, no gaps",
    );
    assert.deepEqual(
      logged.map((e) => `${EventKind[e.kind]} ${e.subject.case === "key" ? e.subject.value.id : ""}`),
      expected,
    );
    assert.ok(reconnects.length >= 2, "reconnected after each restart");
    for (const reconnect of reconnects) {
      // Full jitter: anywhere below the cap, which never exceeds 30 s.
      assert.ok(reconnect.delayMs >= 0 && reconnect.delayMs < 30_000, `delay ${reconnect.delayMs}`);
    }
  });
});

describe("watchExpiring with deliverTokens", () => {
  // Runs after the restart test: its handle rotates every two seconds, and those events
  // share the sequence space that the restart test checks for gaps.
  test("the owner receives the new secret of an automatically rotated handle", async () => {
    const client = new KeyturnClient({ address: server.address, token: server.adminToken });
    const stop = new AbortController();
    try {
      const config = await client.admin.getConfig();
      const updated = await client.admin.updateConfig({
        config: {
          handleTypes: {
            blink: {
              algorithm: "sha256",
              handleLength: 32,
              rotationInterval: { seconds: 2n },
              warningThreshold: { seconds: 1n },
              maxLifetime: { seconds: 120n },
              maxUsage: 10n,
            },
          },
        },
        updateMask: { paths: ["handle_types.blink"] },
        etag: config.etag,
        reason: "a handle type that rotates every two seconds",
      });
      assert.ok("blink" in updated.handleTypes);

      const issued = await client.handles.generateHandle({ type: "blink" });
      const handleId = issued.handle!.id;
      let delivered: ExpiryEvent | undefined;
      for await (const event of client.handles.watchExpiring({
        ids: [handleId],
        deliverTokens: true,
        signal: stop.signal,
      })) {
        if (event.kind === EventKind.ROTATED) {
          delivered = event;
          break;
        }
      }
      assert.ok(delivered);
      assert.notEqual(delivered.token, "");
      assert.notEqual(delivered.token, issued.token);
      const validation = await client.handles.validateHandle({ token: delivered.token });
      assert.equal(validation.valid, true);
      assert.equal(validation.handleId, handleId);

      const removed = await client.handles.removeHandle({ handleId, reason: "test done" });
      assert.equal(removed.status, HandleStatus.REVOKED);
    } finally {
      stop.abort();
      await client.close();
    }
  });
});
