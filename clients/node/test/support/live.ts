/**
 * The live server the suite runs against (KEYTURN_ADDRESS, KEYTURN_TOKEN), clients for
 * it, and narrower principals created through AdminService for tests that need them.
 */
import { randomBytes } from "node:crypto";
import { KeyturnClient, Role, type KeyturnClientOptions } from "../../src/index.js";

export interface LiveServer {
  readonly address: string;
  readonly token: string;
}

export function liveServer(): LiveServer {
  const address = process.env["KEYTURN_ADDRESS"];
  const token = process.env["KEYTURN_TOKEN"];
  if (!address || !token) {
    throw new Error("set KEYTURN_ADDRESS (host:port) and KEYTURN_TOKEN (admin token) to a live server");
  }
  return { address, token };
}

/** A client of the live server with its admin token, unless told otherwise. */
export function adminClient(options: Partial<KeyturnClientOptions> = {}): KeyturnClient {
  return new KeyturnClient({ ...liveServer(), ...options });
}

/** A fresh principal name, unique to this run. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

/** A client acting as a new principal with `role`: it sees only what it owns (SERVICE). */
export async function clientWithRole(
  admin: KeyturnClient,
  role: Role,
  prefix = "node-test",
  options: Partial<KeyturnClientOptions> = {},
): Promise<KeyturnClient> {
  const created = await admin.admin.createAccessToken({ name: uniqueName(prefix), role, userId: "node-tests" });
  return new KeyturnClient({ ...options, address: liveServer().address, token: created.token });
}

/** Polls `condition` every 25 ms until it holds, or fails after `timeoutMs`. */
export async function eventually(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
