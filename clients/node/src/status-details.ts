/**
 * Rich error details of a failed call: the google.rpc.Status the server puts in the
 * `grpc-status-details-bin` trailer, decoded with the generated google/rpc messages.
 */
import { create, fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { AnySchema, anyUnpack, type Any } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

const STATUS_DETAILS_HEADER = "grpc-status-details-bin";

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
  const packed = packedDetails(error);
  const info = first(packed, ErrorInfoSchema);
  const badRequest = first(packed, BadRequestSchema);
  const precondition = first(packed, PreconditionFailureSchema);
  const retry = first(packed, RetryInfoSchema);
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

/**
 * The packed details: from the trailer itself when present (the authoritative copy),
 * otherwise from what Connect already parsed into `error.details`.
 */
function packedDetails(error: ConnectError): Any[] {
  const header = error.metadata.get(STATUS_DETAILS_HEADER);
  if (header !== null) {
    try {
      return fromBinary(StatusSchema, base64Decode(header)).details;
    } catch {
      // A malformed trailer is not worth a second error; fall back to Connect's view.
    }
  }
  return error.details.flatMap((detail) =>
    "desc" in detail
      ? []
      : [create(AnySchema, { typeUrl: `type.googleapis.com/${detail.type}`, value: detail.value })],
  );
}

function first<Desc extends DescMessage>(packed: Any[], schema: Desc): MessageShape<Desc> | undefined {
  for (const any of packed) {
    const message = anyUnpack(any, schema);
    if (message !== undefined) return message;
  }
  return undefined;
}
