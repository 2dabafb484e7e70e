/**
 * KeyturnClient: one connection to a Keyturn server and a typed client per service.
 *
 *   const client = new KeyturnClient({ address: "127.0.0.1:50051", token });
 *   const { key } = await client.keys.generateKey({ type: "encryption" });
 *   for await (const event of client.keys.watchExpiring()) { ... }
 *   client.close();
 */
import { AdminClient } from "./admin.js";
import { Calls, DEFAULT_RETRY_POLICY, type RetryPolicy } from "./calls.js";
import { HandlesClient } from "./handles.js";
import { KeysClient } from "./keys.js";
import { connect, type Connection, type ConnectionOptions } from "./transport.js";

export interface KeyturnClientOptions extends ConnectionOptions {
  /** Deadline of each unary call in milliseconds, unless the call sets its own. */
  readonly timeoutMs?: number;
  /** Retries of idempotent reads on UNAVAILABLE; default 5 attempts, 100 ms doubling to 3 s. */
  readonly retry?: Partial<RetryPolicy>;
}

export class KeyturnClient {
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
    const calls = new Calls({ ...DEFAULT_RETRY_POLICY, ...options.retry }, options.timeoutMs, closed);
    this.keys = new KeysClient(transport, calls, closed);
    this.handles = new HandlesClient(transport, calls, closed);
    this.admin = new AdminClient(transport, calls);
  }

  /** Closes the connection; calls still running fail, open watches end. */
  close(): void {
    this.connection.close();
  }
}
