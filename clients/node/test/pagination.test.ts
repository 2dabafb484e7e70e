/** List RPCs walked page by page with the tokens hidden. */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { InternalError, Role, type KeyturnClient } from "../src/index.js";
import { adminClient, clientWithRole } from "./support/live.js";

const admin = adminClient();
let service: KeyturnClient;
const created: string[] = [];
let listCalls = 0;
/** How the replaying proxy answers ListKeys: 0 passes pages through; n > 0 gives, from the
 * (n+1)th next_page_token on, the token handed out n pages before. */
let replayCycle = 0;
const handedOut: string[] = [];

before(async () => {
  // A service sees only its own keys, so the listing holds exactly what this test made.
  service = await clientWithRole(admin, Role.SERVICE, "node-pages", {
    interceptors: [
      (next) => (request) => {
        if (request.method.name !== "ListKeys") return next(request);
        listCalls++;
        return next(request).then((response) => {
          const page = response.message as { nextPageToken?: string };
          if (replayCycle > 0 && page.nextPageToken) {
            handedOut.push(page.nextPageToken);
            if (handedOut.length > replayCycle) page.nextPageToken = handedOut[handedOut.length - 1 - replayCycle]!;
          }
          return response;
        });
      },
    ],
  });
  for (let i = 0; i < 7; i++) {
    const { key } = await service.keys.generateKey({ type: "encryption", metadata: { index: String(i) } });
    created.push(key!.id);
  }
});

after(async () => {
  await service.close();
  await admin.close();
});

describe("pagination", () => {
  test("seven keys in pages of three are three pages", async () => {
    const first = await service.keys.listKeys({ pageSize: 3 });
    assert.equal(first.keys.length, 3);
    assert.equal(first.totalSize, 7n);
    assert.notEqual(first.nextPageToken, "");
  });

  test("iterateKeys walks every page and yields each key once", async () => {
    const seen: string[] = [];
    for await (const key of service.keys.iterateKeys({ pageSize: 3 })) seen.push(key.id);
    assert.equal(seen.length, 7);
    assert.deepEqual(new Set(seen), new Set(created));
  });

  test("iteration fetches the next page only when the caller gets there", async () => {
    listCalls = 0;
    const iterator = service.keys.iterateKeys({ pageSize: 3 });
    await iterator.next();
    assert.equal(listCalls, 1);
    await iterator.next();
    await iterator.next();
    assert.equal(listCalls, 1, "the first page is not used up yet");
    await iterator.next();
    assert.equal(listCalls, 2);
    await iterator.return();
  });

  test("audit events walk past one page", async () => {
    let count = 0;
    for await (const event of admin.admin.iterateAuditEvents({ pageSize: 5 })) {
      assert.ok(event.sequence > 0n);
      if (++count > 12) break;
    }
    assert.ok(count > 5);
  });

  for (const [cycle, name] of [
    [1, "the same token again"],
    [2, "a cycle of two tokens"],
  ] as const) {
    test(`a repeated page token (${name}) ends the walk with an error instead of looping`, async () => {
      replayCycle = cycle;
      handedOut.length = 0;
      const seen: string[] = [];
      try {
        const walk = (async () => {
          for await (const key of service.keys.iterateKeys({ pageSize: 1 })) seen.push(key.id);
        })();
        const bound = new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error("the walk did not end within 10 s")), 10_000).unref(),
        );
        await assert.rejects(Promise.race([walk, bound]), (error: unknown) => {
          assert.ok(error instanceof InternalError, String(error));
          assert.equal(error.reason, "PAGE_TOKEN_REPEATED");
          assert.ok(handedOut.every((token) => !error.message.includes(token)));
          return true;
        });
        assert.equal(seen.length, cycle + 1, "each page once, then the error");
        assert.equal(new Set(seen).size, seen.length);
      } finally {
        replayCycle = 0;
      }
    });
  }
});
