/** The reconnect schedule of watches and the retry schedule of reads. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Backoff } from "../src/backoff.js";
import { DEFAULT_WATCH_BACKOFF } from "../src/index.js";

describe("backoff", () => {
  test("a watch waits 1 s, doubling up to 30 s", () => {
    const backoff = new Backoff(DEFAULT_WATCH_BACKOFF, () => 0);
    const delays = Array.from({ length: 8 }, () => backoff.next());
    assert.deepEqual(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  });

  test("a reset starts again at 1 s", () => {
    const backoff = new Backoff(DEFAULT_WATCH_BACKOFF, () => 0);
    backoff.next();
    backoff.next();
    backoff.reset();
    assert.equal(backoff.next(), 1_000);
  });

  test("jitter only shortens a delay, by at most its fraction", () => {
    const backoff = new Backoff(DEFAULT_WATCH_BACKOFF, () => 0.999);
    const first = backoff.next();
    assert.ok(first <= 1_000 && first >= 800, `${first}`);
  });
});
