/**
 * AdminService: health, configuration, the audit log and access tokens.
 */
import { create } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import type { Calls } from "./calls.js";
import {
  AdminService,
  HealthSchema,
  type AccessToken,
  type AuditEvent,
  type Config,
  type CreateAccessTokenRequestSchema,
  type CreateAccessTokenResponse,
  type Health,
  type ListAccessTokensRequestSchema,
  type ListAuditEventsRequestSchema,
  type ListAuditEventsResponse,
  type RevokeAccessTokenRequestSchema,
  type UpdateConfigRequestSchema,
  type VerifyAuditLogResponse,
} from "./gen/keyturn/v1/admin_pb.js";
import { walkPages } from "./pages.js";
import type { Init, InitWithout } from "./request-init.js";

/** Filters of `iterateAuditEvents`: ListAuditEvents without the paging fields. */
export type AuditEventFilter = InitWithout<typeof ListAuditEventsRequestSchema, "pageToken">;

/** Components GetHealth reports on; "" is all of them. */
export type HealthComponent = "" | "keys" | "handles" | "store" | "scheduler";

export class AdminClient {
  private readonly rpc: Client<typeof AdminService>;

  constructor(
    transport: Transport,
    private readonly calls: Calls,
  ) {
    this.rpc = createClient(AdminService, transport);
  }

  /** Health of every component, or of one. */
  async getHealth(component: HealthComponent = "", options?: CallOptions): Promise<Health> {
    const response = await this.calls.unary(
      AdminService.method.getHealth,
      (o) => this.rpc.getHealth({ component }, o),
      options,
    );
    return response.health ?? create(HealthSchema);
  }

  getConfig(options?: CallOptions): Promise<Config> {
    return this.calls.unary(AdminService.method.getConfig, (o) => this.rpc.getConfig({}, o), options);
  }

  /** Applies `config` under `updateMask`; a stale `etag` fails with AbortedError. */
  updateConfig(request: Init<typeof UpdateConfigRequestSchema>, options?: CallOptions): Promise<Config> {
    return this.calls.unary(AdminService.method.updateConfig, (o) => this.rpc.updateConfig(request, o), options);
  }

  /** One page; see `iterateAuditEvents` to walk them all. */
  listAuditEvents(
    request: Init<typeof ListAuditEventsRequestSchema>,
    options?: CallOptions,
  ): Promise<ListAuditEventsResponse> {
    return this.calls.unary(AdminService.method.listAuditEvents, (o) => this.rpc.listAuditEvents(request, o), options);
  }

  /** Every audit event matching `filter`, page after page as the caller consumes them. */
  iterateAuditEvents(
    filter: AuditEventFilter = {},
    options?: CallOptions,
  ): AsyncGenerator<AuditEvent, void, undefined> {
    return walkPages(async (pageToken) => {
      const page = await this.listAuditEvents({ ...filter, pageToken }, options);
      return { items: page.events, nextPageToken: page.nextPageToken };
    });
  }

  /** Walks the hash chain; a read (NO_SIDE_EFFECTS), so it is retried like one. */
  verifyAuditLog(options?: CallOptions): Promise<VerifyAuditLogResponse> {
    return this.calls.unary(AdminService.method.verifyAuditLog, (o) => this.rpc.verifyAuditLog({}, o), options);
  }

  /** Creates a bearer token; the response's `token` is the secret, shown this once. */
  createAccessToken(
    request: Init<typeof CreateAccessTokenRequestSchema>,
    options?: CallOptions,
  ): Promise<CreateAccessTokenResponse> {
    return this.calls.unary(
      AdminService.method.createAccessToken,
      (o) => this.rpc.createAccessToken(request, o),
      options,
    );
  }

  async listAccessTokens(
    request: Init<typeof ListAccessTokensRequestSchema> = {},
    options?: CallOptions,
  ): Promise<AccessToken[]> {
    const response = await this.calls.unary(
      AdminService.method.listAccessTokens,
      (o) => this.rpc.listAccessTokens(request, o),
      options,
    );
    return response.accessTokens;
  }

  revokeAccessToken(request: Init<typeof RevokeAccessTokenRequestSchema>, options?: CallOptions): Promise<AccessToken> {
    return this.calls.unary(
      AdminService.method.revokeAccessToken,
      (o) => this.rpc.revokeAccessToken(request, o),
      options,
    );
  }
}
