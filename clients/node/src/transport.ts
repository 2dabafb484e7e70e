/**
 * The gRPC transport of a client: Connect's gRPC protocol over Node's HTTP/2, one
 * connection per client, TLS unless the address is loopback (or plaintext is asked for),
 * with the bearer token in every call's metadata.
 */
import type * as http2 from "node:http2";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { isLoopback } from "./policy.js";

/** Transport security settings, for a private CA, mutual TLS or another server name. */
export interface TlsOptions {
  /** CA certificates (PEM) to trust instead of Node's default roots. */
  readonly ca?: string | Buffer;
  /** Client certificate and private key (PEM), for mutual TLS. */
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** Name to verify in the server certificate when it differs from the address host. */
  readonly serverName?: string;
}

export interface ConnectionOptions {
  /** "host:port" (e.g. "127.0.0.1:50051"), or a full "http://" or "https://" URL. */
  readonly address: string;
  /** Bearer token sent as `authorization: Bearer <token>`. */
  readonly token?: string;
  /**
   * Unset: TLS with Node's default roots, or plaintext when the address is loopback
   * (127.0.0.0/8, ::1, localhost). true: TLS; an object: TLS with these settings; false:
   * plaintext to any address (a TLS-terminating proxy next to the client, say).
   */
  readonly tls?: boolean | TlsOptions;
  /** Run before the bearer-token interceptor, outermost first. */
  readonly interceptors?: readonly Interceptor[];
}

/** A transport and the HTTP/2 connection it owns. */
export interface Connection {
  readonly transport: Transport;
  /** Aborted by close(): watches stop reconnecting. */
  readonly closed: AbortSignal;
  /** Closes the connection; calls still running fail with CANCELLED. */
  close(): Promise<void>;
}

/**
 * Keepalive of every connection (clients/README.md): with a call open, a PING after 60 s
 * without data from the server, and the connection closed when it goes unanswered for 20 s,
 * so that a watch on a connection that went silent (the server's host gone, a partition)
 * reconnects instead of waiting forever. (Connect's own default sends no PING at all.)
 */
export const DEFAULT_KEEPALIVE = { pingIntervalMs: 60_000, pingTimeoutMs: 20_000, pingIdleConnection: false } as const;

export function connect(options: ConnectionOptions): Connection {
  const baseUrl = baseUrlOf(options);
  const sessions = new Http2SessionManager(baseUrl, DEFAULT_KEEPALIVE, nodeOptionsOf(options.tls));
  const interceptors = [...(options.interceptors ?? [])];
  if (options.token !== undefined && options.token !== "") interceptors.push(bearer(options.token));
  const transport = createGrpcTransport({ baseUrl, sessionManager: sessions, interceptors });
  const lifetime = new AbortController();
  return {
    transport,
    closed: lifetime.signal,
    close: async () => {
      lifetime.abort();
      sessions.abort();
      // Let the aborted calls and watches see their end before the caller goes on.
      await new Promise((resolve) => setImmediate(resolve));
    },
  };
}

/**
 * The URL a client connects to: https unless plaintext was chosen or the address is loopback.
 * A URL's scheme decides, and a `tls` setting that contradicts it is an error: `tls: { ca }`
 * with an `http://` address would otherwise send the token in clear without a word.
 */
export function baseUrlOf({ address, tls }: Pick<ConnectionOptions, "address" | "tls">): string {
  const scheme = /^(https?):\/\//.exec(address)?.[1];
  if (scheme !== undefined) {
    if (tls !== undefined && (tls !== false) !== (scheme === "https")) {
      throw new TypeError(`tls: ${tls === false ? "false" : "TLS"} contradicts the address ${address}`);
    }
    return address;
  }
  const secure = tls === undefined ? !isLoopback(address) : tls !== false;
  return `${secure ? "https" : "http"}://${address}`;
}

function nodeOptionsOf(tls: ConnectionOptions["tls"]): http2.SecureClientSessionOptions {
  if (tls === undefined || typeof tls === "boolean") return {};
  const { ca, cert, key, serverName } = tls;
  return {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
    ...(serverName === undefined ? {} : { servername: serverName }),
  };
}

/**
 * A token goes in a header, which carries visible ASCII only: anything else (a line break
 * read from a file, a control character, non-ASCII) is refused here, with a message that
 * does not repeat the token. Node's own error for such a header quotes the value, token and
 * all, into an error that ends up in logs.
 */
function checkedToken(token: string): string {
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new TypeError(
      `the bearer token (${token.length} characters) holds characters a header cannot carry: ` +
        "whitespace, a line break, a control character or non-ASCII (trim what you read from a file)",
    );
  }
  return token;
}

function bearer(token: string): Interceptor {
  const value = `Bearer ${checkedToken(token)}`;
  return (next) => (request) => {
    request.header.set("authorization", value);
    return next(request);
  };
}
