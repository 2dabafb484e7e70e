/**
 * HandleService: rotating, usage-limited bearer credentials (a public handle id and a
 * secret token shown once). A refused validation is data (`valid: false` and a reason),
 * not an error. ValidateHandle counts a use, so it is never retried.
 */
import { create } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import type { Calls } from "./calls.js";
import {
  HandleService,
  type GenerateHandleRequestSchema,
  type GenerateHandleResponse,
  type GetHandleRequestSchema,
  type ListHandlesRequestSchema,
  type ListHandlesResponse,
  type RemoveHandleRequestSchema,
  type RotateHandleRequestSchema,
  type RotateHandleResponse,
  type ValidateHandleRequestSchema,
  type Validation,
  ValidationSchema,
} from "./gen/keyturn/v1/handles_pb.js";
import type { Handle } from "./gen/keyturn/v1/resources_pb.js";
import { HandleStatisticsSchema, type HandleStatistics } from "./gen/keyturn/v1/statistics_pb.js";
import { walkPages } from "./pages.js";
import type { Init, InitWithout } from "./request-init.js";
import { ExpiryWatch, type WatchOptions } from "./watch.js";

/** Filters of `iterateHandles`: ListHandles without the paging fields. */
export type HandleFilter = InitWithout<typeof ListHandlesRequestSchema, "pageToken">;

/** RotateHandle by id or by presenting the current (or just superseded) secret. */
export type RotateHandleTarget =
  | { readonly handleId: string; readonly token?: never }
  | { readonly token: string; readonly handleId?: never };

export type RotateHandleInit = RotateHandleTarget &
  InitWithout<typeof RotateHandleRequestSchema, "target">;

/** Options of the handles' watch: the new secret of rotated handles can ride along. */
export interface HandleWatchOptions extends WatchOptions {
  /** Deliver the new `token` of automatically rotated handles the caller owns. */
  readonly deliverTokens?: boolean;
}

export class HandlesClient {
  private readonly rpc: Client<typeof HandleService>;

  constructor(
    transport: Transport,
    private readonly calls: Calls,
    private readonly closed: AbortSignal,
  ) {
    this.rpc = createClient(HandleService, transport);
  }

  /** Issues a handle; the response's `token` is the secret, shown this once. */
  generateHandle(
    request: Init<typeof GenerateHandleRequestSchema>,
    options?: CallOptions,
  ): Promise<GenerateHandleResponse> {
    return this.calls.unary(HandleService.method.generateHandle, (o) => this.rpc.generateHandle(request, o), options);
  }

  getHandle(request: Init<typeof GetHandleRequestSchema>, options?: CallOptions): Promise<Handle> {
    return this.calls.unary(HandleService.method.getHandle, (o) => this.rpc.getHandle(request, o), options);
  }

  /** One page; see `iterateHandles` to walk them all. */
  listHandles(request: Init<typeof ListHandlesRequestSchema>, options?: CallOptions): Promise<ListHandlesResponse> {
    return this.calls.unary(HandleService.method.listHandles, (o) => this.rpc.listHandles(request, o), options);
  }

  /** Every handle matching `filter`, page after page as the caller consumes them. */
  iterateHandles(filter: HandleFilter = {}, options?: CallOptions): AsyncGenerator<Handle, void, undefined> {
    return walkPages(async (pageToken) => {
      const page = await this.listHandles({ ...filter, pageToken }, options);
      return { items: page.handles, nextPageToken: page.nextPageToken };
    });
  }

  /** Checks a token and counts the use; `valid: false` comes with a `reason`. */
  async validateHandle(request: Init<typeof ValidateHandleRequestSchema>, options?: CallOptions): Promise<Validation> {
    const response = await this.calls.unary(
      HandleService.method.validateHandle,
      (o) => this.rpc.validateHandle(request, o),
      options,
    );
    return response.validation ?? create(ValidationSchema);
  }

  /** Issues a new secret; the previous one keeps validating during the grace period. */
  rotateHandle(request: RotateHandleInit, options?: CallOptions): Promise<RotateHandleResponse> {
    const { handleId, token, ...rest } = request;
    const target =
      handleId !== undefined
        ? { case: "handleId" as const, value: handleId }
        : { case: "token" as const, value: token ?? "" };
    return this.calls.unary(
      HandleService.method.rotateHandle,
      (o) => this.rpc.rotateHandle({ ...rest, target }, o),
      options,
    );
  }

  /** Revokes the handle at once. */
  removeHandle(request: Init<typeof RemoveHandleRequestSchema>, options?: CallOptions): Promise<Handle> {
    return this.calls.unary(HandleService.method.removeHandle, (o) => this.rpc.removeHandle(request, o), options);
  }

  async getHandleStatistics(options?: CallOptions): Promise<HandleStatistics> {
    const response = await this.calls.unary(
      HandleService.method.getHandleStatistics,
      (o) => this.rpc.getHandleStatistics({}, o),
      options,
    );
    return response.statistics ?? create(HandleStatisticsSchema);
  }

  /** Expiry warnings, rotations, revocations and anomalies of handles; reconnects by itself. */
  watchExpiring(options: HandleWatchOptions = {}): ExpiryWatch {
    const { deliverTokens = false, ...watchOptions } = options;
    return new ExpiryWatch((request, o) => this.rpc.watchExpiring(request, o), watchOptions, this.closed, {
      deliverTokens,
    });
  }
}
