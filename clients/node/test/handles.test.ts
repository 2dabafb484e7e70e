/** HandleService through KeyturnClient, against the live server. */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { HandleStatus, ValidationReason } from "../src/index.js";
import { adminClient } from "./support/live.js";

const client = adminClient();
after(() => client.close());

const context = { ip: "192.168.1.100", user_agent: "MyApp/1.0" };

describe("handles", () => {
  test("a workflow handle validates with its token and counts the use", async () => {
    const issued = await client.handles.generateHandle({
      type: "workflow",
      context: { ...context, workflow: "data-processing", environment: "test" },
      userId: "user123",
    });
    const handle = issued.handle!;
    assert.match(handle.id, /\S/);
    assert.equal(handle.status, HandleStatus.ACTIVE);
    assert.equal(handle.maxUsage, 100n);
    assert.ok(issued.token.length > 0);

    const validation = await client.handles.validateHandle({ token: issued.token, context, userId: "user123" });
    assert.equal(validation.valid, true);
    assert.equal(validation.handleId, handle.id);
    assert.equal(validation.remainingUses, 99n);

    const read = await client.handles.getHandle({ handleId: handle.id });
    assert.equal(read.usageCount, 1n);
    assert.equal(read.context["workflow"], "data-processing");
  });

  test("an unknown token is refused as data, not as an error", async () => {
    const validation = await client.handles.validateHandle({ token: "not-a-token", context });
    assert.equal(validation.valid, false);
    assert.notEqual(validation.reason, ValidationReason.UNSPECIFIED);
  });

  test("after rotation the new token validates and the previous one is flagged as rotated", async () => {
    const issued = await client.handles.generateHandle({ type: "session", context });
    const rotated = await client.handles.rotateHandle({ handleId: issued.handle!.id, reason: "test" });
    assert.notEqual(rotated.token, issued.token);
    assert.equal(rotated.handle?.generation, 2);
    assert.ok(rotated.previousValidUntil);

    const current = await client.handles.validateHandle({ token: rotated.token, context });
    assert.equal(current.valid, true);
    assert.equal(current.rotated, false);
    const previous = await client.handles.validateHandle({ token: issued.token, context });
    assert.equal(previous.valid, true);
    assert.equal(previous.rotated, true);
  });

  test("rotation by presenting the current token works without the id", async () => {
    const issued = await client.handles.generateHandle({ type: "api", context });
    const rotated = await client.handles.rotateHandle({ token: issued.token, context });
    assert.equal(rotated.handle?.id, issued.handle!.id);
  });

  test("a removed handle is revoked and its token no longer validates", async () => {
    const issued = await client.handles.generateHandle({ type: "device", context });
    const removed = await client.handles.removeHandle({ handleId: issued.handle!.id, reason: "lost device" });
    assert.equal(removed.status, HandleStatus.REVOKED);

    const validation = await client.handles.validateHandle({ token: issued.token, context });
    assert.equal(validation.valid, false);
    assert.ok(
      [ValidationReason.REVOKED, ValidationReason.INVALID].includes(validation.reason),
      `reason ${ValidationReason[validation.reason]}`,
    );
  });

  test("handle statistics count validations", async () => {
    const statistics = await client.handles.getHandleStatistics();
    assert.ok(statistics.total > 0n);
    assert.ok(statistics.validations > 0n);
  });
});
