/**
 * KeyService: keys generated, rotated and used in place by the service. Thin typed
 * methods, one per RPC; the calls the API marks idempotent (reads, encrypt, sign, MACs...) are
 * retried per the client policy, the others run once.
 */
import { create } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import type { Calls } from "./calls.js";
import {
  KeyService,
  type ComputeMacRequestSchema,
  type ComputeMacResponse,
  type DecryptRequestSchema,
  type DecryptResponse,
  type DisableKeyVersionRequestSchema,
  type EncryptRequestSchema,
  type EncryptResponse,
  type EnableKeyVersionRequestSchema,
  type ExportKeyRequestSchema,
  type ExportKeyResponse,
  type GenerateKeyRequestSchema,
  type GenerateKeyResponse,
  type GetKeyRequestSchema,
  type GetPublicKeyRequestSchema,
  type GetPublicKeyResponse,
  type ListKeysRequestSchema,
  type ListKeysResponse,
  type RemoveKeyRequestSchema,
  type RestoreKeyRequestSchema,
  type RotateKeyRequestSchema,
  type SignRequestSchema,
  type SignResponse,
  type VerifyMacRequestSchema,
  type VerifyMacResponse,
  type VerifyRequestSchema,
  type VerifyResponse,
} from "./gen/keyturn/v1/keys_pb.js";
import type { Key } from "./gen/keyturn/v1/resources_pb.js";
import { KeyStatisticsSchema, type KeyStatistics } from "./gen/keyturn/v1/statistics_pb.js";
import { walkPages } from "./pages.js";
import type { Init, InitWithout } from "./request-init.js";
import { ExpiryWatch, type WatchOptions } from "./watch.js";

/** Filters of `iterateKeys`: ListKeys without the paging fields. */
export type KeyFilter = InitWithout<typeof ListKeysRequestSchema, "pageToken">;

export class KeysClient {
  private readonly rpc: Client<typeof KeyService>;

  constructor(
    transport: Transport,
    private readonly calls: Calls,
    private readonly closed: AbortSignal,
  ) {
    this.rpc = createClient(KeyService, transport);
  }

  generateKey(request: Init<typeof GenerateKeyRequestSchema>, options?: CallOptions): Promise<GenerateKeyResponse> {
    return this.calls.unary(KeyService.method.generateKey, (o) => this.rpc.generateKey(request, o), options);
  }

  getKey(request: Init<typeof GetKeyRequestSchema>, options?: CallOptions): Promise<Key> {
    return this.calls.unary(KeyService.method.getKey, (o) => this.rpc.getKey(request, o), options);
  }

  /** One page; see `iterateKeys` to walk them all. */
  listKeys(request: Init<typeof ListKeysRequestSchema>, options?: CallOptions): Promise<ListKeysResponse> {
    return this.calls.unary(KeyService.method.listKeys, (o) => this.rpc.listKeys(request, o), options);
  }

  /** Every key matching `filter`, page after page as the caller consumes them. */
  iterateKeys(filter: KeyFilter = {}, options?: CallOptions): AsyncGenerator<Key, void, undefined> {
    return walkPages(async (pageToken) => {
      const page = await this.listKeys({ ...filter, pageToken }, options);
      return { items: page.keys, nextPageToken: page.nextPageToken };
    });
  }

  rotateKey(request: Init<typeof RotateKeyRequestSchema>, options?: CallOptions): Promise<Key> {
    return this.calls.unary(KeyService.method.rotateKey, (o) => this.rpc.rotateKey(request, o), options);
  }

  removeKey(request: Init<typeof RemoveKeyRequestSchema>, options?: CallOptions): Promise<Key> {
    return this.calls.unary(KeyService.method.removeKey, (o) => this.rpc.removeKey(request, o), options);
  }

  restoreKey(request: Init<typeof RestoreKeyRequestSchema>, options?: CallOptions): Promise<Key> {
    return this.calls.unary(KeyService.method.restoreKey, (o) => this.rpc.restoreKey(request, o), options);
  }

  /**
   * Refuses every use of one non-primary version (a suspected compromise) until it is
   * enabled again; a repeat changes nothing.
   */
  disableKeyVersion(request: Init<typeof DisableKeyVersionRequestSchema>, options?: CallOptions): Promise<Key> {
    return this.calls.unary(
      KeyService.method.disableKeyVersion,
      (o) => this.rpc.disableKeyVersion(request, o),
      options,
    );
  }

  /** Lets a disabled version be used again, until its max lifetime. */
  enableKeyVersion(request: Init<typeof EnableKeyVersionRequestSchema>, options?: CallOptions): Promise<Key> {
    return this.calls.unary(KeyService.method.enableKeyVersion, (o) => this.rpc.enableKeyVersion(request, o), options);
  }

  async getKeyStatistics(options?: CallOptions): Promise<KeyStatistics> {
    const response = await this.calls.unary(
      KeyService.method.getKeyStatistics,
      (o) => this.rpc.getKeyStatistics({}, o),
      options,
    );
    return response.statistics ?? create(KeyStatisticsSchema);
  }

  exportKey(request: Init<typeof ExportKeyRequestSchema>, options?: CallOptions): Promise<ExportKeyResponse> {
    return this.calls.unary(KeyService.method.exportKey, (o) => this.rpc.exportKey(request, o), options);
  }

  encrypt(request: Init<typeof EncryptRequestSchema>, options?: CallOptions): Promise<EncryptResponse> {
    return this.calls.unary(KeyService.method.encrypt, (o) => this.rpc.encrypt(request, o), options);
  }

  decrypt(request: Init<typeof DecryptRequestSchema>, options?: CallOptions): Promise<DecryptResponse> {
    return this.calls.unary(KeyService.method.decrypt, (o) => this.rpc.decrypt(request, o), options);
  }

  sign(request: Init<typeof SignRequestSchema>, options?: CallOptions): Promise<SignResponse> {
    return this.calls.unary(KeyService.method.sign, (o) => this.rpc.sign(request, o), options);
  }

  verify(request: Init<typeof VerifyRequestSchema>, options?: CallOptions): Promise<VerifyResponse> {
    return this.calls.unary(KeyService.method.verify, (o) => this.rpc.verify(request, o), options);
  }

  getPublicKey(request: Init<typeof GetPublicKeyRequestSchema>, options?: CallOptions): Promise<GetPublicKeyResponse> {
    return this.calls.unary(KeyService.method.getPublicKey, (o) => this.rpc.getPublicKey(request, o), options);
  }

  computeMac(request: Init<typeof ComputeMacRequestSchema>, options?: CallOptions): Promise<ComputeMacResponse> {
    return this.calls.unary(KeyService.method.computeMac, (o) => this.rpc.computeMac(request, o), options);
  }

  verifyMac(request: Init<typeof VerifyMacRequestSchema>, options?: CallOptions): Promise<VerifyMacResponse> {
    return this.calls.unary(KeyService.method.verifyMac, (o) => this.rpc.verifyMac(request, o), options);
  }

  /** Expiry warnings, rotations and removals of keys; reconnects and resumes by itself. */
  watchExpiring(options: WatchOptions = {}): ExpiryWatch {
    return new ExpiryWatch((request, o) => this.rpc.watchExpiring(request, o), options, this.closed);
  }
}
