/** The reconnect schedule of watches and the retry schedule of calls: full jitter below caps. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Backoff, backoffCap } from "../src/backoff.js";
import { DEFAULT_RETRY_POLICY, DEFAULT_WATCH_BACKOFF } from "../src/index.js";

describe("backoff", () => {
  test("a watch's caps are 1 s doubling up to 30 s", () => {
    const caps = Array.from({ length: 8 }, (_, retry) => backoffCap(DEFAULT_WATCH_BACKOFF, retry));
    assert.deepEqual(caps, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  });

  test("each wait is drawn between 0 and its cap", () => {
    const draws = [0, 0.5, 0.25];
    const backoff = new Backoff(DEFAULT_RETRY_POLICY, () => draws.shift()!);
    assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [0, 100, 100]);
  });

  test("a reset starts again from the first cap", () => {
    const backoff = new Backoff(DEFAULT_WATCH_BACKOFF, () => 0.5);
    backoff.next();
    backoff.next();
    backoff.reset();
    assert.equal(backoff.next(), 500);
  });
});
