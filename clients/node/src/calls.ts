/**
 * How one unary call runs: errors become KeyturnError subclasses, and idempotent reads
 * are retried on UNAVAILABLE with exponential backoff. Calls that change state run once:
 * a retried GenerateKey or ValidateHandle could act twice.
 */
import { Code, type CallOptions } from "@connectrpc/connect";
import { Backoff, sleep, type BackoffPolicy } from "./backoff.js";
import { toKeyturnError } from "./errors.js";
import { linkSignals } from "./signals.js";

export interface RetryPolicy extends BackoffPolicy {
  /** Attempts in total, the first included; 1 turns retries off. */
  readonly maxAttempts: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 5,
  initialMs: 100,
  maxMs: 3_000,
  multiplier: 2,
  jitter: 0.2,
};

/** Runs unary calls for the service clients. */
export class Calls {
  constructor(
    private readonly retryPolicy: RetryPolicy,
    private readonly defaultTimeoutMs: number | undefined,
    /** Aborted when the client closes: running calls end, new ones fail at once. */
    private readonly clientClosed: AbortSignal,
  ) {}

  /** A call that changes state: one attempt. */
  async write<T>(call: (options: CallOptions) => Promise<T>, options: CallOptions = {}): Promise<T> {
    const linked = linkSignals(options.signal, this.clientClosed);
    const callOptions = this.withDefaults(options, linked.signal);
    try {
      return await call(callOptions);
    } catch (error) {
      throw toKeyturnError(error, linked.signal);
    } finally {
      linked.release();
    }
  }

  /** An idempotent read (Get*, List*, statistics, health, config): retried on UNAVAILABLE. */
  async read<T>(call: (options: CallOptions) => Promise<T>, options: CallOptions = {}): Promise<T> {
    const backoff = new Backoff(this.retryPolicy);
    const linked = linkSignals(options.signal, this.clientClosed);
    const callOptions = this.withDefaults(options, linked.signal);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          return await call(callOptions);
        } catch (reason) {
          const error = toKeyturnError(reason, linked.signal);
          if (error.code !== Code.Unavailable || attempt >= this.retryPolicy.maxAttempts) throw error;
          try {
            await sleep(backoff.next(), linked.signal);
          } catch (aborted) {
            throw toKeyturnError(aborted);
          }
        }
      }
    } finally {
      linked.release();
    }
  }

  private withDefaults(options: CallOptions, signal: AbortSignal): CallOptions {
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    return { ...options, signal, ...(timeoutMs === undefined ? {} : { timeoutMs }) };
  }
}
