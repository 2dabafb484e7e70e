/**
 * How one unary call runs: errors become KeyturnError subclasses, and idempotent reads
 * are retried on UNAVAILABLE with exponential backoff. Calls that change state run once:
 * a retried GenerateKey or ValidateHandle could act twice.
 */
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
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
  write<T>(call: (options: CallOptions) => Promise<T>, options: CallOptions = {}): Promise<T> {
    return this.run(call, options, 1);
  }

  /** An idempotent read (Get*, List*, statistics, health, config): retried on UNAVAILABLE. */
  read<T>(call: (options: CallOptions) => Promise<T>, options: CallOptions = {}): Promise<T> {
    return this.run(call, options, this.retryPolicy.maxAttempts);
  }

  /** Runs `call` up to `maxAttempts` times, backing off between attempts that were UNAVAILABLE. */
  private async run<T>(
    call: (options: CallOptions) => Promise<T>,
    options: CallOptions,
    maxAttempts: number,
  ): Promise<T> {
    const backoff = new Backoff(this.retryPolicy);
    const linked = linkSignals(options.signal, this.clientClosed);
    const callOptions = this.withDefaults(options, linked.signal);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          return await call(callOptions);
        } catch (reason) {
          const error = toKeyturnError(reason, linked.signal);
          if (error.code !== Code.Unavailable || attempt >= maxAttempts) throw error;
          try {
            await sleep(backoff.next(), linked.signal);
          } catch (aborted) {
            // The signal's reason may be anything (a string, a plain Error): it is a cancellation.
            throw toKeyturnError(ConnectError.from(aborted, Code.Canceled));
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
