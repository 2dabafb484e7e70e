/**
 * Exponential backoff with full jitter, and an abortable sleep, shared by unary retries and
 * the reconnecting watch (clients/README.md: the same numbers in every Keyturn client).
 */

export interface BackoffPolicy {
  /** Cap of the first wait, in milliseconds. */
  readonly initialMs: number;
  /** Ceiling of the cap, in milliseconds. */
  readonly maxMs: number;
  /** Growth of the cap between consecutive waits. */
  readonly multiplier: number;
}

/** The longest wait before retry `retry` (0 for the first). */
export function backoffCap({ initialMs, maxMs, multiplier }: BackoffPolicy, retry: number): number {
  const ceiling = Math.max(maxMs, initialMs);
  let cap = initialMs;
  for (let i = 0; i < retry && cap < ceiling; i++) cap *= Math.max(multiplier, 1);
  return Math.min(cap, ceiling);
}

/**
 * The wait before retry `retry` for a random `draw` in [0, 1): full jitter spreads clients
 * that failed together over the whole window instead of bringing them back in step.
 */
export function backoffDelay(policy: BackoffPolicy, retry: number, draw: number): number {
  return draw * backoffCap(policy, retry);
}

/** Successive waits of one policy; reset() starts again from the first cap. */
export class Backoff {
  private retry = 0;

  constructor(
    private readonly policy: BackoffPolicy,
    private readonly random: () => number = Math.random,
  ) {}

  /** The wait before the next attempt, in milliseconds; each call grows the cap. */
  next(): number {
    const delay = backoffDelay(this.policy, this.retry, this.random());
    this.retry += 1;
    return delay;
  }

  /** Back to the first cap, after a success. */
  reset(): void {
    this.retry = 0;
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
