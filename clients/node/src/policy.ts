/**
 * The client policy of clients/README.md as rules: which methods may be retried (from the
 * `idempotency_level` of the protobuf-es descriptors), which failures are retried, which end
 * a watch, how long RetryInfo asks to wait, and which addresses are loopback.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BlockList, isIP } from "node:net";
import type { KeyturnError } from "./errors.js";
import { statusDetailsOf } from "./status-details.js";

/** Whether failed attempts of `method` may be sent again: NO_SIDE_EFFECTS or IDEMPOTENT. */
export function isRetryable(method: DescMethod): boolean {
  return (
    method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS ||
    method.idempotency === MethodOptions_IdempotencyLevel.IDEMPOTENT
  );
}

/** The wait in milliseconds a google.rpc.RetryInfo in the error's details asks for. */
export function retryInfoMs(error: KeyturnError): number | undefined {
  return error.cause instanceof ConnectError ? statusDetailsOf(error.cause).retryAfterMs : undefined;
}

/**
 * Whether a retryable call that failed with `error` is tried again: UNAVAILABLE, or
 * RESOURCE_EXHAUSTED when the server said when to come back (a rate limit, not a quota).
 */
export function isRetried(error: KeyturnError): boolean {
  if (error.code === Code.Unavailable) return true;
  return error.code === Code.ResourceExhausted && retryInfoMs(error) !== undefined;
}

/** Codes that end a watch for good: another try would fail the same way. */
export const WATCH_ENDS_ON: ReadonlySet<Code> = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.AlreadyExists,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.OutOfRange,
  Code.Unimplemented,
  Code.DataLoss,
]);

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/**
 * Whether "host:port" names this machine: a loopback IP (127.0.0.0/8, ::1) or `localhost`.
 * Other names may resolve anywhere, so they are not.
 */
export function isLoopback(address: string): boolean {
  let host = address;
  if (address.startsWith("[")) host = address.slice(1, address.indexOf("]"));
  else if (address.split(":").length === 2) host = address.slice(0, address.lastIndexOf(":"));
  if (host.toLowerCase() === "localhost") return true;
  const family = isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 4 ? "ipv4" : "ipv6");
}
