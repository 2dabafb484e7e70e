package dev.keyturn.client;

import java.util.Objects;

/**
 * How the calls the API marks idempotent are retried: with {@code backoff} between attempts
 * until the call's deadline, and at most {@code maxAttempts} attempts in all when positive (0:
 * the deadline alone decides; 1: no retries).
 */
public record RetryPolicy(Backoff backoff, int maxAttempts) {
  /** The policy of every Keyturn client: {@link Backoff#CALLS}, until the deadline. */
  public static final RetryPolicy DEFAULT = new RetryPolicy(Backoff.CALLS, 0);

  /** Each call is tried once. */
  public static final RetryPolicy NO_RETRY = new RetryPolicy(Backoff.CALLS, 1);

  public RetryPolicy {
    Objects.requireNonNull(backoff, "backoff");
    if (maxAttempts < 0) {
      throw new IllegalArgumentException("maxAttempts is 0 (no cap) or more");
    }
  }

  /** Whether another attempt may follow attempt number {@code attempts} (1 for the first). */
  boolean allowsAnother(int attempts) {
    return maxAttempts == 0 || attempts < maxAttempts;
  }
}
