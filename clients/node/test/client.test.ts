/** The life of a KeyturnClient: closing it ends its watches and refuses further calls. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { CancelledError, KeyturnClient, KeyturnError, UnknownError } from "../src/index.js";
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
    await client.close();
    await consumer; // returns instead of reconnecting forever
    assert.ok(yielded >= 1);

    await assert.rejects(client.keys.getKey({ keyId: "key_aaaaaaaaaaaaaaaa" }), CancelledError);
  });

  test("await using closes the client at the end of its block", async () => {
    let escaped: KeyturnClient | undefined;
    let consumer: Promise<void> | undefined;
    {
      await using client = adminClient();
      escaped = client;
      const watch = client.keys.watchExpiring();
      consumer = (async () => {
        for await (const event of watch) void event;
      })();
      await eventually(() => watch.lastSequence !== undefined, 10_000, "SNAPSHOT_COMPLETE");
    }
    await consumer; // the watch ended with the block
    await assert.rejects(escaped.keys.getKey({ keyId: "key_aaaaaaaaaaaaaaaa" }), CancelledError);
  });

  test("a caller's abort during the retry backoff ends the read with CancelledError", async () => {
    // No server needed: nothing listens on port 1, so every attempt fails UNAVAILABLE and
    // the read backs off (a long first delay) before retrying.
    let attempts = 0;
    let failedOnce!: () => void;
    const firstFailure = new Promise<void>((resolve) => (failedOnce = resolve));
    const client = new KeyturnClient({
      address: "127.0.0.1:1",
      token: "unused",
      // A wait drawn below an hour (full jitter), with no deadline to cut it short.
      retry: { maxAttempts: 5, initialMs: 3_600_000, maxMs: 3_600_000 },
      timeoutMs: 0,
      interceptors: [
        (next) => async (request) => {
          attempts++;
          try {
            return await next(request);
          } finally {
            failedOnce();
          }
        },
      ],
    });
    try {
      const controller = new AbortController();
      const call = client.admin.getHealth("", { signal: controller.signal }).catch((e: unknown) => e);
      await firstFailure;
      // Let the client see the failure and start its backoff before aborting.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const started = Date.now();
      controller.abort("user left"); // a string reason, not an AbortError
      const error = await call;
      assert.ok(error instanceof CancelledError, `expected CancelledError, got ${String(error)}`);
      assert.ok(!(error instanceof UnknownError));
      assert.ok(error instanceof KeyturnError);
      assert.equal(error.code, Code.Canceled);
      assert.equal(attempts, 1, "no retry after the abort");
      assert.ok(Date.now() - started < 5_000, "the abort ends the backoff at once");
    } finally {
      await client.close();
    }
  });

  test("a tls setting that the address's scheme contradicts is refused, not ignored", () => {
    const ca = "-----BEGIN CERTIFICATE-----\n...";
    // TLS asked for, an http:// URL given: it would have gone in clear, token and all.
    assert.throws(() => new KeyturnClient({ address: "http://keyturn.example.com:443", tls: { ca } }), TypeError);
    assert.throws(() => new KeyturnClient({ address: "http://keyturn.example.com:443", tls: true }), TypeError);
    assert.throws(() => new KeyturnClient({ address: "https://keyturn.example.com:443", tls: false }), TypeError);
    // A scheme alone, or one that agrees, is fine.
    for (const options of [
      { address: "http://10.0.0.1:50051" },
      { address: "https://keyturn.example.com:443", tls: { ca } },
      { address: "http://10.0.0.1:50051", tls: false },
    ]) {
      void new KeyturnClient(options).close();
    }
  });

  test("a token a header cannot carry is refused when the client is made, without repeating it", () => {
    for (const token of ["kt_admin_secret\n", "kt_admin_s\u00e9cret", "kt_admin_secret\u0001", " kt_admin_secret"]) {
      assert.throws(
        () => new KeyturnClient({ address: "127.0.0.1:1", token }),
        (error: unknown) => error instanceof TypeError && !String(error).includes("kt_admin"),
        JSON.stringify(token),
      );
    }
  });
});
