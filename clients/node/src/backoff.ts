/**
 * Exponential backoff with jitter, and an abortable sleep, shared by unary retries and
 * the reconnecting watch.
 */

export interface BackoffPolicy {
  /** First delay in milliseconds. */
  readonly initialMs: number;
  /** Ceiling of the delay in milliseconds. */
  readonly maxMs: number;
  /** Growth factor between consecutive delays. */
  readonly multiplier: number;
  /**
   * Fraction of each delay that is randomised (0: none, 0.2: up to 20% shorter), so
   * that many clients cut off at once do not come back in step.
   */
  readonly jitter: number;
}

/** Successive delays of one policy: 1 s, 2 s, 4 s ... up to the ceiling; reset() restarts. */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly policy: BackoffPolicy,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt, in milliseconds; each call grows it. */
  next(): number {
    const { initialMs, maxMs, multiplier, jitter } = this.policy;
    const base = Math.min(maxMs, initialMs * multiplier ** this.attempt);
    this.attempt += 1;
    return Math.round(base * (1 - jitter * this.random()));
  }

  /** Back to the initial delay, after a success. */
  reset(): void {
    this.attempt = 0;
  }
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
