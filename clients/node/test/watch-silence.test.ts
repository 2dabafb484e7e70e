/**
 * A watch gives up a stream that stays silent past the server's heartbeats (a stuck server
 * whose connection still answers pings) and resumes it, driven by scripted streams; the
 * shared policy table (policy-table.test.ts) runs the same rule over a real channel.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import type { CallOptions } from "@connectrpc/connect";
import { EventKind, ExpiryEventSchema, KeyturnError, type ExpiryEvent } from "../src/index.js";
import {
  DEFAULT_WATCH_SILENCE,
  ExpiryWatch,
  silenceLimitMs,
  type Reconnect,
  type WatchExpiringRequestInit,
} from "../src/watch.js";

/** What one stream sends, then whether it goes silent (true) or ends cleanly. */
interface Connection {
  readonly events: ExpiryEvent[];
  readonly silent: boolean;
}

const created = (sequence: number): ExpiryEvent =>
  create(ExpiryEventSchema, { kind: EventKind.CREATED, sequence: BigInt(sequence) });
const complete = (latest: number, everyMs?: number): ExpiryEvent =>
  create(ExpiryEventSchema, {
    kind: EventKind.SNAPSHOT_COMPLETE,
    latestSequence: BigInt(latest),
    ...(everyMs === undefined ? {} : { heartbeatInterval: create(DurationSchema, { nanos: everyMs * 1e6 }) }),
  });
const describeEvent = (e: ExpiryEvent): string =>
  e.kind === EventKind.SNAPSHOT_COMPLETE ? `complete@${e.latestSequence}` : String(e.sequence);

/** Plays one connection per stream and records each stream's resume point. */
function scripted(...connections: Connection[]) {
  const resumePoints: Array<bigint | undefined> = [];
  const open = (request: WatchExpiringRequestInit, options: CallOptions): AsyncIterable<ExpiryEvent> => {
    resumePoints.push(request.resumeAfter as bigint | undefined);
    const connection = connections.shift();
    assert.ok(connection !== undefined, "the watch connected more often than scripted");
    return (async function* () {
      yield* connection.events;
      if (!connection.silent) return;
      const signal = options.signal!;
      await new Promise((_, reject) => {
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason));
      });
    })();
  };
  return { open, resumePoints };
}

/** The policy's rule, faster: 3 heartbeats of 50 ms, at least 200 ms. */
const QUICK = { heartbeats: 3, floorMs: 200 };
const INSTANT = { initialMs: 1, maxMs: 1, multiplier: 2 };

describe("a silent watch stream", () => {
  test("is given up after three heartbeats of silence, and never before 5 s", () => {
    const limits = [undefined, 100, 1_000, 2_000, 30_000].map((ms) => silenceLimitMs(DEFAULT_WATCH_SILENCE, ms));
    assert.deepEqual(limits, [undefined, 5_000, 5_000, 6_000, 90_000]);
  });

  test("is cancelled and resumed, also when the resumed one says nothing", async () => {
    const server = scripted(
      { events: [complete(10, 50), created(11)], silent: true },
      { events: [], silent: true }, // resumed: no SNAPSHOT_COMPLETE, and a stuck server says nothing
      { events: [created(12)], silent: true },
    );
    const told: Reconnect[] = [];
    const stop = new AbortController();
    const watch = new ExpiryWatch(
      server.open,
      { silence: QUICK, backoff: INSTANT, signal: stop.signal, onReconnect: (r) => told.push(r) },
      new AbortController().signal,
    );
    const seen: string[] = [];
    for await (const event of watch) {
      seen.push(describeEvent(event));
      if (seen.length === 3) stop.abort();
    }
    assert.deepEqual(seen, ["complete@10", "11", "12"]);
    assert.deepEqual(server.resumePoints, [undefined, 11n, 11n]);
    assert.deepEqual(
      told.map((r) => [r.error?.codeName, r.error?.reason]),
      [
        ["UNAVAILABLE", "HEARTBEAT_MISSED"],
        ["UNAVAILABLE", "HEARTBEAT_MISSED"],
      ],
    );
    assert.ok(told.every((r) => r.error instanceof KeyturnError));
  });

  test("from a server that does not say how often it beats is waited for", async () => {
    const server = scripted({ events: [complete(10)], silent: true });
    const stop = new AbortController();
    const watch = new ExpiryWatch(
      server.open,
      { silence: QUICK, backoff: INSTANT, signal: stop.signal },
      new AbortController().signal,
    );
    const seen: string[] = [];
    const timer = setTimeout(() => stop.abort(), 1_000);
    for await (const event of watch) seen.push(describeEvent(event));
    clearTimeout(timer);
    assert.deepEqual(seen, ["complete@10"]);
    assert.equal(server.resumePoints.length, 1);
  });
});
