/**
 * The shared client-policy table (clients/policy/cases.json), run against the scripted server
 * every client's tests use (clients/policy/scripted_server.py): which calls are retried and
 * how often, how long the client waits (RetryInfo), the one deadline of a call, how watches
 * reconnect and resume, and the numbers every client must share.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { backoffDelay, type BackoffPolicy } from "../src/backoff.js";
import { isLoopback, isRetryable, WATCH_ENDS_ON } from "../src/policy.js";
import { baseUrlOf, DEFAULT_KEEPALIVE } from "../src/transport.js";
import {
  AdminService,
  DEFAULT_RETRY_POLICY,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_WATCH_BACKOFF,
  DEFAULT_WATCH_SILENCE,
  EventKind,
  HandleService,
  KeyService,
  KeyturnClient,
  KeyturnError,
  type ExpiryEvent,
} from "../src/index.js";
import type { CallOptions } from "@connectrpc/connect";

const tablePath = process.env["KEYTURN_POLICY_CASES"] ?? new URL("../../../policy/cases.json", import.meta.url);
const table: any = JSON.parse(readFileSync(tablePath, "utf8"));

const scripted = {
  address: process.env["KEYTURN_POLICY_ADDRESS"],
  tlsAddress: process.env["KEYTURN_POLICY_TLS_ADDRESS"],
  ca: process.env["KEYTURN_POLICY_CA"],
  control: process.env["KEYTURN_POLICY_CONTROL"],
};
const noServer =
  scripted.address === undefined
    ? "KEYTURN_POLICY_* are not set: start clients/policy/scripted_server.py (run-tests.sh does)"
    : false;

const ms = (row: any): BackoffPolicy => ({ initialMs: row.initial_ms, maxMs: row.max_ms, multiplier: row.multiplier });
const TEST_BACKOFF = ms(table.test_backoff);

/** A code as the table names it: "UNAVAILABLE", "CANCELLED". */
function codeName(code: Code): string {
  return code === Code.Canceled ? "CANCELLED" : Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** One call per method the table scripts; the scripted server ignores the requests. */
const CALLS: Record<string, (client: KeyturnClient, options: CallOptions) => Promise<unknown>> = {
  "keyturn.v1.KeyService/GetKey": (c, o) => c.keys.getKey({ keyId: "key_x" }, o),
  "keyturn.v1.KeyService/Encrypt": (c, o) => c.keys.encrypt({ keyId: "key_x" }, o),
  "keyturn.v1.KeyService/Decrypt": (c, o) => c.keys.decrypt({ keyId: "key_x" }, o),
  "keyturn.v1.KeyService/Sign": (c, o) => c.keys.sign({ keyId: "key_x" }, o),
  "keyturn.v1.KeyService/ComputeMac": (c, o) => c.keys.computeMac({ keyId: "key_x" }, o),
  "keyturn.v1.KeyService/GenerateKey": (c, o) => c.keys.generateKey({ type: "encryption" }, o),
  "keyturn.v1.HandleService/ValidateHandle": (c, o) => c.handles.validateHandle({ token: "kt_x" }, o),
  "keyturn.v1.HandleService/RotateHandle": (c, o) => c.handles.rotateHandle({ handleId: "hdl_x" }, o),
  "keyturn.v1.AdminService/UpdateConfig": (c, o) => c.admin.updateConfig({ etag: "" }, o),
};

async function runOf(token: string): Promise<any> {
  const answer = await fetch(`${scripted.control}/runs/${token}`);
  assert.equal(answer.status, 200, `no run ${token} on the scripted server`);
  return answer.json();
}

/** What the server saw against the case's expectations. */
function checkRun(expect: any, run: any): void {
  (expect.min_waits_ms ?? []).forEach((least: number, i: number) =>
    assert.ok(run.waits_ms[i] >= least, `waits ${run.waits_ms}: wait ${i} should be >= ${least} ms`),
  );
  if (expect.max_deadline_drift_ms !== undefined) {
    assert.ok(run.deadline_drift_ms !== null, "an attempt carried no deadline");
    assert.ok(run.deadline_drift_ms <= expect.max_deadline_drift_ms, `deadline drift ${run.deadline_drift_ms} ms`);
  }
  if (expect.granted_ms !== undefined) {
    const [low, high] = expect.granted_ms;
    const granted = run.granted_ms[0];
    assert.ok(granted !== null && granted >= low && granted <= high, `the server saw a deadline of ${granted} ms`);
  }
  if (expect.no_deadline) assert.deepEqual(run.granted_ms, run.granted_ms.map(() => null));
  if (expect.tls) assert.ok(run.tls.every(Boolean), `TLS per attempt: ${run.tls}`);
}

/** An event in the table's notation: "snapshot", "complete@10", "heartbeat@20", "11". */
function describeEvent(event: ExpiryEvent): string {
  if (event.snapshot) return "snapshot";
  if (event.kind === EventKind.SNAPSHOT_COMPLETE) return `complete@${event.latestSequence}`;
  if (event.kind === EventKind.HEARTBEAT) return `heartbeat@${event.latestSequence}`;
  return String(event.sequence);
}

describe("client policy table", () => {
  test("the client defaults are the policy numbers", () => {
    const { initialMs, maxMs, multiplier, maxAttempts } = DEFAULT_RETRY_POLICY;
    assert.deepEqual({ initialMs, maxMs, multiplier }, ms(table.policy.call_backoff));
    assert.equal(maxAttempts ?? null, table.policy.max_attempts);
    assert.equal(DEFAULT_TIMEOUT_MS, table.policy.default_timeout_ms);
    assert.deepEqual(DEFAULT_WATCH_BACKOFF, ms(table.policy.watch_backoff));
    // What every connection's Http2SessionManager is made with: PINGs only with a call open.
    const { time_ms, timeout_ms } = table.policy.keepalive;
    assert.deepEqual(DEFAULT_KEEPALIVE, { pingIntervalMs: time_ms, pingTimeoutMs: timeout_ms, pingIdleConnection: false });
    const { heartbeats, floor_ms } = table.policy.watch_silence;
    assert.deepEqual(DEFAULT_WATCH_SILENCE, { heartbeats, floorMs: floor_ms });
  });

  test("every RPC is retried as its idempotency_level says", () => {
    const levels: Record<string, string> = {};
    for (const service of [KeyService, HandleService, AdminService]) {
      for (const method of service.methods) {
        const name = `${service.typeName}/${method.name}`;
        levels[name] = MethodOptions_IdempotencyLevel[method.idempotency]!;
        assert.equal(isRetryable(method), table.methods[name] !== "IDEMPOTENCY_UNKNOWN", name);
      }
    }
    assert.deepEqual(levels, table.methods);
  });

  test("the codes that end a watch are the policy ones", () => {
    assert.deepEqual([...WATCH_ENDS_ON].map(codeName).sort(), [...table.policy.watch_ends_on].sort());
  });

  test("backoff vectors", () => {
    for (const v of table.backoff) {
      const policy = v.policy === "call" ? DEFAULT_RETRY_POLICY : DEFAULT_WATCH_BACKOFF;
      const wait = Math.max(backoffDelay(policy, v.retry, v.random), v.retry_info_ms ?? 0);
      assert.ok(Math.abs(wait - v.delay_ms) < 0.001, `${JSON.stringify(v)}: ${wait}`);
    }
  });

  test("loopback vectors", () => {
    for (const v of table.loopback) {
      assert.equal(isLoopback(v.address), v.loopback, v.address);
      // TLS unless loopback, by default.
      assert.equal(baseUrlOf({ address: v.address }).startsWith("https://"), !v.loopback, v.address);
    }
  });

  table.calls.forEach((tc: any, index: number) => {
    test(`call: ${tc.name}`, { skip: noServer }, async () => {
      const token = `call-${index}~node-${randomBytes(6).toString("hex")}`;
      const tls = tc.transport === "tls";
      const client = new KeyturnClient({
        address: (tls ? scripted.tlsAddress : scripted.address)!,
        token,
        retry: { ...TEST_BACKOFF, ...(tc.max_attempts === undefined ? {} : { maxAttempts: tc.max_attempts }) },
        ...(tls ? { tls: { ca: readFileSync(scripted.ca!), serverName: "keyturn.test" } } : {}),
      });
      const started = Date.now();
      let outcome = "OK";
      try {
        await CALLS[tc.method]!(client, tc.timeout_ms === null ? {} : { timeoutMs: tc.timeout_ms });
      } catch (error) {
        assert.ok(error instanceof KeyturnError, String(error));
        outcome = error.codeName;
      } finally {
        await client.close();
      }
      const elapsed = Date.now() - started;

      const run = await runOf(token);
      const expect = tc.expect;
      assert.equal(outcome, expect.code);
      if (expect.attempts !== undefined) assert.equal(run.attempts, expect.attempts, "attempts");
      assert.ok(run.attempts >= (expect.min_attempts ?? 1), `${run.attempts} attempts`);
      assert.deepEqual([...new Set(run.methods)], [tc.method]);
      if (expect.max_elapsed_ms !== undefined) assert.ok(elapsed <= expect.max_elapsed_ms, `took ${elapsed} ms`);
      checkRun(expect, run);
    });
  });

  table.watches.forEach((tc: any, index: number) => {
    test(`watch: ${tc.name}`, { skip: noServer }, async () => {
      const token = `watch-${index}~node-${randomBytes(6).toString("hex")}`;
      const client = new KeyturnClient({ address: scripted.address!, token });
      const stop = new AbortController();
      const guard = setTimeout(() => stop.abort(), 20_000); // a cancel, not a deadline
      const delivered: string[] = [];
      let outcome = "ended without an error";
      try {
        const subject = tc.subject === "handles" ? client.handles : client.keys;
        const watch = subject.watchExpiring({
          backoff: TEST_BACKOFF,
          signal: stop.signal,
          ...(tc.resume_after === null ? {} : { resumeAfter: BigInt(tc.resume_after) }),
        });
        for await (const event of watch) delivered.push(describeEvent(event));
      } catch (error) {
        assert.ok(error instanceof KeyturnError, String(error));
        outcome = error.codeName;
      } finally {
        clearTimeout(guard);
        await client.close();
      }

      const run = await runOf(token);
      assert.deepEqual({ delivered, outcome }, { delivered: tc.expect.delivered, outcome: tc.expect.code });
      assert.deepEqual(run.resume_after, tc.expect.resume_after);
      checkRun(tc.expect, run);
    });
  });
});
