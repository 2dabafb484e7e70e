/**
 * The specification's JavaScript usage example ("KeyManager"), on the Keyturn client:
 * generate an encryption key, generate a workflow handle with context, validate it with
 * ip and user agent, then read health and key and handle statistics.
 *
 * Differences from the original REST sketch: calls go over gRPC with a bearer token, and
 * a handle is validated with its secret token (returned once by generateHandle), not
 * with its public id.
 *
 *   KEYTURN_ADDRESS=127.0.0.1:50051 KEYTURN_TOKEN=... node dist/keymanager.js
 */
import {
  HandleStatisticsSchema,
  HealthSchema,
  KeyStatisticsSchema,
  KeyturnClient,
  KeyturnError,
  ServingStatus,
  toJsonString,
  type GenerateHandleResponse,
  type Health,
  type HandleStatistics,
  type Key,
  type KeyStatistics,
  type Validation,
} from "@keyturn/client";

export class KeyManager {
  constructor(private readonly client: KeyturnClient) {}

  /** Generate a new encryption key. */
  async generateEncryptionKey(userId: string): Promise<Key> {
    const { key } = await this.client.keys.generateKey({
      type: "encryption",
      metadata: { purpose: "data-encryption", environment: "production" },
      userId,
    });
    if (key === undefined) throw new Error("GenerateKey returned no key");
    return key;
  }

  /** Generate a workflow handle; the response carries its secret token, shown once. */
  generateWorkflowHandle(userId: string, context: Record<string, string>): Promise<GenerateHandleResponse> {
    return this.client.handles.generateHandle({
      type: "workflow",
      context: { ...context, environment: "production" },
      userId,
    });
  }

  /** Validate a handle's token in the context of this use. */
  validateHandle(token: string, userId: string, context: { ip: string; userAgent: string }): Promise<Validation> {
    return this.client.handles.validateHandle({
      token,
      context: { ip: context.ip, user_agent: context.userAgent },
      userId,
    });
  }

  /** Get system health. */
  getHealth(): Promise<Health> {
    return this.client.admin.getHealth();
  }

  /** Get key and handle statistics. */
  async getStatistics(): Promise<{ keys: KeyStatistics; handles: HandleStatistics }> {
    const [keys, handles] = await Promise.all([
      this.client.keys.getKeyStatistics(),
      this.client.handles.getHandleStatistics(),
    ]);
    return { keys, handles };
  }
}

async function example(keyManager: KeyManager): Promise<void> {
  // Generate a key
  const key = await keyManager.generateEncryptionKey("user123");
  console.log("Generated key:", key.id);

  // Generate a handle
  const { handle, token } = await keyManager.generateWorkflowHandle("user123", {
    workflow: "data-processing",
    session: "session123",
  });
  console.log("Generated handle:", handle?.id);

  // Validate handle
  const validation = await keyManager.validateHandle(token, "user123", {
    ip: "192.168.1.100",
    userAgent: "MyApp/1.0",
  });
  console.log("Handle valid:", validation.valid);
  if (!validation.valid) throw new Error("a fresh workflow handle did not validate");

  // Get health status
  const health = await keyManager.getHealth();
  console.log("System health:", toJsonString(HealthSchema, health, { prettySpaces: 2 }));
  if (health.status !== ServingStatus.SERVING) throw new Error("the server is not serving");

  // Get statistics
  const stats = await keyManager.getStatistics();
  console.log("Key statistics:", toJsonString(KeyStatisticsSchema, stats.keys, { prettySpaces: 2 }));
  console.log("Handle statistics:", toJsonString(HandleStatisticsSchema, stats.handles, { prettySpaces: 2 }));
}

async function main(): Promise<number> {
  const address = process.env["KEYTURN_ADDRESS"] ?? "127.0.0.1:50051";
  const token = process.env["KEYTURN_TOKEN"];
  if (!token) {
    console.error("Error: set KEYTURN_TOKEN (and KEYTURN_ADDRESS, default 127.0.0.1:50051)");
    return 2;
  }
  const client = new KeyturnClient({ address, token, timeoutMs: 10_000 });
  try {
    await example(new KeyManager(client));
    return 0;
  } catch (error) {
    if (error instanceof KeyturnError) {
      const reason = error.reason === "" ? "" : ` (${error.reason})`;
      console.error(`Error: ${error.codeName}${reason}: ${error.message}`);
    } else {
      console.error("Error:", error instanceof Error ? error.message : error);
    }
    return 1;
  } finally {
    await client.close();
  }
}

process.exitCode = await main();
