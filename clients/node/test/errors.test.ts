/**
 * Failed calls raise the KeyturnError subclass of their status code, with the reason,
 * metadata and field violations of the google.rpc.Status the server sent.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { base64Encode } from "@bufbuild/protobuf/wire";
import { anyPack, DurationSchema, type Any } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AbortedError,
  DataLossError,
  FailedPreconditionError,
  InvalidArgumentError,
  KeyturnClient,
  KeyturnError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  Role,
  toKeyturnError,
  UnauthenticatedError,
  UnavailableError,
} from "../src/index.js";
import { ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import { adminClient, clientWithRole, liveServer } from "./support/live.js";

const client = adminClient();
after(() => client.close());

describe("errors from the live server", () => {
  test("an unknown key is a NotFoundError with reason KEY_NOT_FOUND", async () => {
    const error = await rejection(client.keys.getKey({ keyId: "key_aaaaaaaaaaaaaaaa" }));
    assert.ok(error instanceof NotFoundError);
    assert.ok(error instanceof KeyturnError);
    assert.equal(error.code, Code.NotFound);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.reason, "KEY_NOT_FOUND");
    assert.equal(error.domain, "keyturn.dev");
  });

  test("a request without a type is an InvalidArgumentError naming the field", async () => {
    const error = await rejection(client.keys.generateKey({ type: "" }));
    assert.ok(error instanceof InvalidArgumentError);
    assert.equal(error.reason, "INVALID_ARGUMENT");
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["type"],
    );
    assert.match(error.fieldViolations[0]!.description, /\S/);
  });

  test("a wrong bearer token is an UnauthenticatedError", async () => {
    const stranger = new KeyturnClient({ address: liveServer().address, token: "kt_not_a_real_token" });
    try {
      const error = await rejection(stranger.admin.getConfig());
      assert.ok(error instanceof UnauthenticatedError);
      assert.match(error.reason, /\S/);
    } finally {
      await stranger.close();
    }
  });

  test("a service may not create access tokens: PermissionDeniedError with the permission", async () => {
    const service = await clientWithRole(client, Role.SERVICE);
    try {
      const error = await rejection(service.admin.createAccessToken({ name: "x", role: Role.ADMIN }));
      assert.ok(error instanceof PermissionDeniedError);
      assert.equal(error.reason, "ROLE_NOT_ALLOWED");
      assert.match(error.metadata["permission"] ?? "", /\S/);
    } finally {
      await service.close();
    }
  });

  test("using a removed key fails its precondition", async () => {
    const { key } = await client.keys.generateKey({ type: "encryption" });
    await client.keys.removeKey({ keyId: key!.id });
    const error = await rejection(client.keys.encrypt({ keyId: key!.id, plaintext: new Uint8Array([1]) }));
    assert.ok(error instanceof FailedPreconditionError, `${error.name}: ${error.message}`);
  });

  test("a server that does not answer is an UnavailableError after the retries of a read", async () => {
    let attempts = 0;
    const nowhere = new KeyturnClient({
      address: "127.0.0.1:1",
      token: "unused",
      retry: { maxAttempts: 3, initialMs: 10, maxMs: 20 },
      interceptors: [(next) => (request) => (attempts++, next(request))],
    });
    try {
      const error = await rejection(nowhere.keys.getKey({ keyId: "key_aaaaaaaaaaaaaaaa" }));
      assert.ok(error instanceof UnavailableError);
      assert.equal(attempts, 3);

      attempts = 0;
      const write = await rejection(nowhere.keys.generateKey({ type: "encryption" }));
      assert.ok(write instanceof UnavailableError);
      assert.equal(attempts, 1, "a call that changes state is never retried");
    } finally {
      await nowhere.close();
    }
  });
});

describe("mapping of status details", () => {
  const cases: ReadonlyArray<[Code, new (...args: never[]) => KeyturnError]> = [
    [Code.ResourceExhausted, ResourceExhaustedError],
    [Code.Aborted, AbortedError],
    [Code.OutOfRange, OutOfRangeError],
    [Code.DataLoss, DataLossError],
    [Code.Unavailable, UnavailableError],
  ];
  for (const [code, expected] of cases) {
    test(`${Code[code]} becomes ${expected.name} with its ErrorInfo`, () => {
      const error = toKeyturnError(errorWithStatus(code, "WATCH_OVERFLOW", { resume_after: "42" }));
      assert.ok(error instanceof expected);
      assert.equal(error.reason, "WATCH_OVERFLOW");
      assert.deepEqual(error.metadata, { resume_after: "42" });
      assert.equal(error.message, "the detail");
    });
  }

  test("RetryInfo of a rate limit becomes retryAfter in milliseconds", () => {
    const delay = create(DurationSchema, { seconds: 2n, nanos: 500_000_000 });
    const error = toKeyturnError(
      errorWithStatus(Code.ResourceExhausted, "RATE_LIMITED", {}, [
        anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: delay })),
      ]),
    );
    assert.ok(error instanceof ResourceExhaustedError);
    assert.equal(error.retryAfter, 2500);
  });

  test("an error without details has an empty reason", () => {
    const error = toKeyturnError(new ConnectError("plain", Code.Internal));
    assert.equal(error.reason, "");
    assert.deepEqual(error.metadata, {});
  });
});

/** A ConnectError as the gRPC transport builds it from a trailer with status details. */
function errorWithStatus(
  code: Code,
  reason: string,
  metadata: Record<string, string>,
  extra: Any[] = [],
): ConnectError {
  const info = create(ErrorInfoSchema, { reason, domain: "keyturn.dev", metadata });
  const status = create(StatusSchema, {
    code,
    message: "the detail",
    details: [anyPack(ErrorInfoSchema, info), ...extra],
  });
  const trailer = new Headers({ "grpc-status-details-bin": base64Encode(toBinary(StatusSchema, status), "std_raw") });
  // Like the transport: the trailer becomes the metadata, and each Any of the Status an
  // incoming detail of its type name and bytes, which findDetails() decodes.
  const error = new ConnectError(status.message, code, trailer);
  error.details = status.details.map((any) => ({
    type: any.typeUrl.substring(any.typeUrl.lastIndexOf("/") + 1),
    value: any.value,
  }));
  return error;
}

async function rejection(promise: Promise<unknown>): Promise<KeyturnError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof KeyturnError, `expected a KeyturnError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected the call to fail");
}
