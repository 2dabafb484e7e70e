/**
 * Errors of Keyturn calls: one class per gRPC status code, each carrying the decoded
 * google.rpc.ErrorInfo (reason, domain, metadata) of the server's status details.
 *
 *   KeyturnError                  any failed call; `code`, `reason`, `metadata`
 *   ├── CancelledError            the caller's signal aborted the call, or close()
 *   ├── UnknownError
 *   ├── InvalidArgumentError      `fieldViolations` from google.rpc.BadRequest
 *   ├── DeadlineExceededError
 *   ├── NotFoundError             e.g. reason KEY_NOT_FOUND, HANDLE_NOT_FOUND
 *   ├── AlreadyExistsError
 *   ├── PermissionDeniedError
 *   ├── ResourceExhaustedError    `retryAfter` (ms) from google.rpc.RetryInfo
 *   ├── FailedPreconditionError   wrong state, e.g. using a removed key
 *   ├── AbortedError              stale etag; a watch that fell behind (WATCH_OVERFLOW)
 *   ├── OutOfRangeError           a resume point older than the event retention
 *   ├── UnimplementedError
 *   ├── InternalError
 *   ├── UnavailableError          server unreachable or gone; idempotent reads retry it
 *   ├── DataLossError             stored ciphertext failed authentication
 *   └── UnauthenticatedError      missing, unknown, expired or revoked token
 *
 * Catch at whichever level fits: `KeyturnError` for everything, a subclass for one case.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  statusDetailsOf,
  type FieldViolation,
  type PreconditionViolation,
  type StatusDetails,
} from "./status-details.js";

export type { FieldViolation, PreconditionViolation, StatusDetails } from "./status-details.js";

/** Base class of every error a KeyturnClient call raises. */
export class KeyturnError extends Error {
  /** The gRPC status code (Connect's numbering, which is gRPC's). */
  readonly code: Code;
  /** ErrorInfo.reason, e.g. "KEY_NOT_FOUND"; "" when the server sent none. */
  readonly reason: string;
  /** ErrorInfo.domain: "keyturn.dev" for errors raised by the service itself. */
  readonly domain: string;
  /** ErrorInfo.metadata: what the error is about (ids, limits, resume points). */
  readonly metadata: Readonly<Record<string, string>>;
  /** The server's message without the code prefix Connect adds. */
  readonly rawMessage: string;

  constructor(error: ConnectError, details: StatusDetails) {
    super(error.rawMessage === "" ? Code[error.code] : error.rawMessage, { cause: error });
    this.name = new.target.name;
    this.code = error.code;
    this.reason = details.reason;
    this.domain = details.domain;
    this.metadata = details.metadata;
    this.rawMessage = error.rawMessage;
  }

  /** Upper snake case name of the code, as in gRPC: "NOT_FOUND", "INVALID_ARGUMENT". */
  get codeName(): string {
    if (this.code === Code.Canceled) return "CANCELLED";
    return Code[this.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  }
}

export class CancelledError extends KeyturnError {}
export class UnknownError extends KeyturnError {}
export class DeadlineExceededError extends KeyturnError {}
export class NotFoundError extends KeyturnError {}
export class AlreadyExistsError extends KeyturnError {}
export class PermissionDeniedError extends KeyturnError {}
export class AbortedError extends KeyturnError {}
export class OutOfRangeError extends KeyturnError {}
export class UnimplementedError extends KeyturnError {}
export class InternalError extends KeyturnError {}
export class UnavailableError extends KeyturnError {}
export class DataLossError extends KeyturnError {}
export class UnauthenticatedError extends KeyturnError {}

/** A request field was wrong; `fieldViolations` names each one. */
export class InvalidArgumentError extends KeyturnError {
  readonly fieldViolations: readonly FieldViolation[];

  constructor(error: ConnectError, details: StatusDetails) {
    super(error, details);
    this.fieldViolations = details.fieldViolations;
  }
}

/** A rate limit or quota was hit; wait `retryAfter` milliseconds when it is given. */
export class ResourceExhaustedError extends KeyturnError {
  readonly retryAfter: number | undefined;

  constructor(error: ConnectError, details: StatusDetails) {
    super(error, details);
    this.retryAfter = details.retryAfterMs;
  }
}

/** The target is in the wrong state for the call (removed key, revoked handle...). */
export class FailedPreconditionError extends KeyturnError {
  readonly violations: readonly PreconditionViolation[];

  constructor(error: ConnectError, details: StatusDetails) {
    super(error, details);
    this.violations = details.preconditionViolations;
  }
}

type ErrorClass = new (error: ConnectError, details: StatusDetails) => KeyturnError;

const CLASS_OF_CODE: Readonly<Record<Code, ErrorClass>> = {
  [Code.Canceled]: CancelledError,
  [Code.Unknown]: UnknownError,
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.NotFound]: NotFoundError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.Aborted]: AbortedError,
  [Code.OutOfRange]: OutOfRangeError,
  [Code.Unimplemented]: UnimplementedError,
  [Code.Internal]: InternalError,
  [Code.Unavailable]: UnavailableError,
  [Code.DataLoss]: DataLossError,
  [Code.Unauthenticated]: UnauthenticatedError,
};

/**
 * Converts anything a call threw into the KeyturnError subclass of its status code.
 * Given the call's `signal`, a CANCELLED that the caller did not ask for (an HTTP/2
 * stream reset because the server went away) becomes the UnavailableError it really is.
 */
export function toKeyturnError(reason: unknown, signal?: AbortSignal): KeyturnError {
  if (reason instanceof KeyturnError) return reason;
  let error = ConnectError.from(reason);
  if (error.code === Code.Canceled && signal !== undefined && !signal.aborted) {
    const unavailable = new ConnectError(error.rawMessage, Code.Unavailable, error.metadata, undefined, reason);
    unavailable.details = error.details; // incoming details, which the constructor does not take
    error = unavailable;
  }
  const ErrorOfCode = CLASS_OF_CODE[error.code] ?? UnknownError;
  return new ErrorOfCode(error, statusDetailsOf(error));
}
