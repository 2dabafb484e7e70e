/**
 * Rich error details of a failed call: the details of the google.rpc.Status the server
 * puts in the `grpc-status-details-bin` trailer, which Connect decodes into
 * `ConnectError.details`, read with the generated google/rpc messages.
 */
import type { ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** One bad field of a request, from google.rpc.BadRequest. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** One unmet condition, from google.rpc.PreconditionFailure. */
export interface PreconditionViolation {
  readonly type: string;
  readonly subject: string;
  readonly description: string;
}

/** What the details of one error say, flattened for the error classes. */
export interface StatusDetails {
  /** ErrorInfo.reason, e.g. "KEY_NOT_FOUND"; "" when the server sent none. */
  readonly reason: string;
  /** ErrorInfo.domain ("keyturn.dev" for errors of the service itself). */
  readonly domain: string;
  /** ErrorInfo.metadata, e.g. { key_id: "..." } or { resume_after: "42" }. */
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  readonly preconditionViolations: readonly PreconditionViolation[];
  /** RetryInfo.retry_delay in milliseconds. */
  readonly retryAfterMs: number | undefined;
}

/** Decodes the details of `error`; empty details when it carries none. */
export function statusDetailsOf(error: ConnectError): StatusDetails {
  const [info] = error.findDetails(ErrorInfoSchema);
  const [badRequest] = error.findDetails(BadRequestSchema);
  const [precondition] = error.findDetails(PreconditionFailureSchema);
  const [retry] = error.findDetails(RetryInfoSchema);
  return {
    reason: info?.reason ?? "",
    domain: info?.domain ?? "",
    metadata: { ...(info?.metadata ?? {}) },
    fieldViolations: (badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field,
      description: v.description,
    })),
    preconditionViolations: (precondition?.violations ?? []).map((v) => ({
      type: v.type,
      subject: v.subject,
      description: v.description,
    })),
    retryAfterMs:
      retry?.retryDelay === undefined
        ? undefined
        : Number(retry.retryDelay.seconds) * 1000 + Math.round(retry.retryDelay.nanos / 1e6),
  };
}

