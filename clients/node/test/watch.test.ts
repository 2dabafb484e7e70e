/** WatchExpiring on the live server: order, exactly-once, resume from a checkpoint. */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { EventKind, OutOfRangeError, type ExpiryEvent } from "../src/index.js";
import { adminClient, eventually } from "./support/live.js";

const client = adminClient();
after(() => client.close());

const keyIdOf = (event: ExpiryEvent): string => (event.subject.case === "key" ? event.subject.value.id : "");
const handleIdOf = (event: ExpiryEvent): string => (event.subject.case === "handle" ? event.subject.value.id : "");

describe("watchExpiring", () => {
  test("a key watch starts with SNAPSHOT_COMPLETE, then yields CREATED and ROTATED in order", async () => {
    const stop = new AbortController();
    const watch = client.keys.watchExpiring({
      kinds: [EventKind.CREATED, EventKind.ROTATED],
      signal: stop.signal,
    });
    const seen: ExpiryEvent[] = [];
    const consumer = (async () => {
      for await (const event of watch) seen.push(event);
    })();
    await eventually(() => seen.some((e) => e.kind === EventKind.SNAPSHOT_COMPLETE), 10_000, "SNAPSHOT_COMPLETE");
    const start = watch.lastSequence;
    assert.notEqual(start, undefined);

    const { key } = await client.keys.generateKey({ type: "encryption" });
    const keyId = key!.id;
    await client.keys.rotateKey({ keyId });
    await client.keys.rotateKey({ keyId });
    const mine = (): ExpiryEvent[] => seen.filter((e) => keyIdOf(e) === keyId);
    await eventually(() => mine().length === 3, 10_000, "three events of the new key");
    stop.abort();
    await consumer;

    assert.deepEqual(
      mine().map((e) => EventKind[e.kind]),
      ["CREATED", "ROTATED", "ROTATED"],
    );
    const sequences = seen.filter((e) => e.sequence > 0n).map((e) => e.sequence);
    assert.deepEqual(sequences, [...new Set(sequences)].sort((a, b) => (a < b ? -1 : 1)), "increasing, no duplicates");
    assert.ok(sequences[0]! > start!);

    // A second watch resumed from the checkpoint replays exactly the same events.
    const replay = new AbortController();
    const replayed: ExpiryEvent[] = [];
    for await (const event of client.keys.watchExpiring({ ids: [keyId], resumeAfter: start!, signal: replay.signal })) {
      replayed.push(event);
      if (replayed.length === 3) replay.abort();
    }
    assert.deepEqual(
      replayed.map((e) => e.sequence),
      mine().map((e) => e.sequence),
    );
  });

  test("a handle watch yields the revocation of a removed handle", async () => {
    const stop = new AbortController();
    const watch = client.handles.watchExpiring({ kinds: [EventKind.REVOKED], signal: stop.signal });
    const seen: ExpiryEvent[] = [];
    const consumer = (async () => {
      for await (const event of watch) seen.push(event);
    })();
    await eventually(() => watch.lastSequence !== undefined, 10_000, "SNAPSHOT_COMPLETE");

    const issued = await client.handles.generateHandle({ type: "session" });
    await client.handles.removeHandle({ handleId: issued.handle!.id, reason: "test" });
    await eventually(() => seen.some((e) => handleIdOf(e) === issued.handle!.id), 10_000, "the REVOKED event");
    stop.abort();
    await consumer;
  });

  test("a resume point ahead of the event log is an OutOfRangeError, not a reconnect loop", async () => {
    let reconnects = 0;
    const watch = client.keys.watchExpiring({ resumeAfter: 1n << 60n, onReconnect: () => reconnects++ });
    await assert.rejects(async () => {
      for await (const event of watch) void event;
    }, OutOfRangeError);
    assert.equal(reconnects, 0);
  });
});
