/** Signals linking a call to its caller's signal and to the client's lifetime. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { linkSignals } from "../src/signals.js";

describe("linked signals", () => {
  test("a linked signal aborts when any source aborts, with that source's reason", () => {
    const caller = new AbortController();
    const client = new AbortController();
    const linked = linkSignals(caller.signal, client.signal);
    assert.equal(linked.signal.aborted, false);
    client.abort("closed");
    assert.equal(linked.signal.aborted, true);
    assert.equal(linked.signal.reason, "closed");
  });

  test("a released link no longer follows its sources", () => {
    const caller = new AbortController();
    const client = new AbortController();
    const linked = linkSignals(caller.signal, client.signal);
    linked.release();
    caller.abort();
    assert.equal(linked.signal.aborted, false);
  });

  test("an already aborted source aborts the link at once", () => {
    const linked = linkSignals(AbortSignal.abort("gone"), new AbortController().signal);
    assert.equal(linked.signal.aborted, true);
  });
});
