/**
 * How one unary call runs (clients/README.md): one deadline fixed when it starts, errors as
 * KeyturnError subclasses, and retries only for the methods whose `idempotency_level` allows
 * them, on UNAVAILABLE or on RESOURCE_EXHAUSTED with a RetryInfo. Every other call runs once:
 * a retried GenerateKey or ValidateHandle could act twice.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { Backoff, sleep, type BackoffPolicy } from "./backoff.js";
import { toKeyturnError, type KeyturnError } from "./errors.js";
import { isRetried, isRetryable, retryInfoMs } from "./policy.js";
import { linkSignals } from "./signals.js";

export interface RetryPolicy extends BackoffPolicy {
  /** Attempts in total, the first included (1 turns retries off); unset: the deadline decides. */
  readonly maxAttempts?: number;
}

/** Waits below 100 ms doubling to 5 s, until the call's deadline. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  initialMs: 100,
  maxMs: 5_000,
  multiplier: 2,
};

/** The deadline of a unary call that sets none of its own, retries included. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** Runs unary calls for the service clients. */
export class Calls {
  constructor(
    private readonly retryPolicy: RetryPolicy,
    /** 0: no deadline unless the call sets one. */
    private readonly defaultTimeoutMs: number,
    /** Aborted when the client closes: running calls end, new ones fail at once. */
    private readonly clientClosed: AbortSignal,
    private readonly random: () => number = Math.random,
  ) {}

  /**
   * Runs `call` for `method` within one deadline: `options.timeoutMs`, else the client's.
   * Each attempt carries only the time that remains; a wait that would end past the deadline
   * is not slept: the last error is thrown at once.
   */
  async unary<T>(method: DescMethod, call: (options: CallOptions) => Promise<T>, options: CallOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : undefined;
    const maxAttempts = isRetryable(method) ? (this.retryPolicy.maxAttempts ?? Infinity) : 1;
    const backoff = new Backoff(this.retryPolicy, this.random);
    const linked = linkSignals(options.signal, this.clientClosed);
    try {
      for (let attempt = 1; ; attempt++) {
        const left = deadline === undefined ? undefined : Math.max(1, deadline - Date.now());
        try {
          return await call({ ...options, signal: linked.signal, timeoutMs: left });
        } catch (reason) {
          const error = toKeyturnError(reason, linked.signal);
          if (attempt >= maxAttempts || !isRetried(error)) throw error;
          const wait = Math.max(backoff.next(), retryInfoMs(error) ?? 0);
          if (deadline !== undefined && Date.now() + wait >= deadline) throw error;
          await this.pause(wait, linked.signal);
        }
      }
    } finally {
      linked.release();
    }
  }

  private async pause(ms: number, signal: AbortSignal): Promise<void> {
    try {
      await sleep(ms, signal);
    } catch (aborted) {
      // The signal's reason may be anything (a string, a plain Error): it is a cancellation.
      throw toKeyturnError(ConnectError.from(aborted, Code.Canceled)) satisfies KeyturnError;
    }
  }
}
