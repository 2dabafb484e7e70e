/**
 * KeyturnClient: one connection to a Keyturn server and a typed client per service.
 *
 *   await using client = new KeyturnClient({ address: "127.0.0.1:50051", token });
 *   const { key } = await client.keys.generateKey({ type: "encryption" });
 *   for await (const event of client.keys.watchExpiring()) { ... }
 *
 * (or `await client.close()` when done, without `await using`).
 */
import { AdminClient } from "./admin.js";
import { Calls, DEFAULT_RETRY_POLICY, DEFAULT_TIMEOUT_MS, type RetryPolicy } from "./calls.js";
import { HandlesClient } from "./handles.js";
import { KeysClient } from "./keys.js";
import { connect, type Connection, type ConnectionOptions } from "./transport.js";

export interface KeyturnClientOptions extends ConnectionOptions {
  /**
   * Deadline of each unary call in milliseconds, retries included, unless the call sets
   * its own `timeoutMs`; default 30 000, 0 for none.
   */
  readonly timeoutMs?: number;
  /**
   * Retries of the calls the API marks idempotent, on UNAVAILABLE and on RESOURCE_EXHAUSTED
   * with a RetryInfo: waits below 100 ms doubling to 5 s, until the call's deadline.
   */
  readonly retry?: Partial<RetryPolicy>;
}

export class KeyturnClient implements AsyncDisposable {
  /** KeyService: generate, rotate and use keys; watch their expiry. */
  readonly keys: KeysClient;
  /** HandleService: issue, validate and rotate workflow handles; watch their expiry. */
  readonly handles: HandlesClient;
  /** AdminService: health, configuration, audit log, access tokens. */
  readonly admin: AdminClient;
  private readonly connection: Connection;

  constructor(options: KeyturnClientOptions) {
    this.connection = connect(options);
    const { transport, closed } = this.connection;
    const calls = new Calls({ ...DEFAULT_RETRY_POLICY, ...options.retry }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS, closed);
    this.keys = new KeysClient(transport, calls, closed);
    this.handles = new HandlesClient(transport, calls, closed);
    this.admin = new AdminClient(transport, calls);
  }

  /** Closes the connection: calls still running fail with CancelledError, open watches end. */
  close(): Promise<void> {
    return this.connection.close();
  }

  /** `await using client = new KeyturnClient(...)` closes it at the end of the block. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
