/** The life of a KeyturnClient: closing it ends its watches and refuses further calls. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CancelledError, KeyturnError } from "../src/index.js";
import { adminClient, eventually } from "./support/live.js";

describe("client", () => {
  test("close() ends an open watch quietly and later calls fail with CancelledError", async () => {
    const client = adminClient();
    const watch = client.keys.watchExpiring();
    let yielded = 0;
    const consumer = (async () => {
      for await (const event of watch) void (event && yielded++);
    })();
    await eventually(() => watch.lastSequence !== undefined, 10_000, "SNAPSHOT_COMPLETE");
    client.close();
    await consumer; // returns instead of reconnecting forever
    assert.ok(yielded >= 1);

    await assert.rejects(client.keys.getKey({ keyId: "key_aaaaaaaaaaaaaaaa" }), CancelledError);
  });

  test("a caller's abort signal cancels a call without retries", async () => {
    const client = adminClient();
    try {
      const abort = new AbortController();
      abort.abort();
      const error = await client.admin.getHealth("", { signal: abort.signal }).catch((e: unknown) => e);
      assert.ok(error instanceof CancelledError);
      assert.ok(error instanceof KeyturnError);
    } finally {
      client.close();
    }
  });
});
