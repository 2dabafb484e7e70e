/**
 * Keyturn client for Node.js: `KeyturnClient` and its service clients, the error
 * hierarchy, the reconnecting watch, and the generated keyturn.v1 message types.
 */
export { KeyturnClient, type KeyturnClientOptions } from "./client.js";
export type { ConnectionOptions, TlsOptions } from "./transport.js";
export { KeysClient, type KeyFilter } from "./keys.js";
export {
  HandlesClient,
  type HandleFilter,
  type HandleWatchOptions,
  type RotateHandleInit,
  type RotateHandleTarget,
} from "./handles.js";
export { AdminClient, type AuditEventFilter, type HealthComponent } from "./admin.js";
export { DEFAULT_RETRY_POLICY, DEFAULT_TIMEOUT_MS, type RetryPolicy } from "./calls.js";
export type { BackoffPolicy } from "./backoff.js";
export {
  DEFAULT_WATCH_BACKOFF,
  DEFAULT_WATCH_SILENCE,
  ExpiryWatch,
  type Reconnect,
  type SilencePolicy,
  type WatchExpiringRequestInit,
  type WatchOptions,
} from "./watch.js";
export type { Init, InitWithout } from "./request-init.js";
export * from "./errors.js";
/** Building and printing messages: `create(KeySchema, {...})`, `toJsonString(KeySchema, key)`. */
export { create, toJson, toJsonString } from "@bufbuild/protobuf";

export * from "./gen/keyturn/v1/admin_pb.js";
export * from "./gen/keyturn/v1/events_pb.js";
export * from "./gen/keyturn/v1/handles_pb.js";
export * from "./gen/keyturn/v1/keys_pb.js";
export * from "./gen/keyturn/v1/resources_pb.js";
export * from "./gen/keyturn/v1/statistics_pb.js";
