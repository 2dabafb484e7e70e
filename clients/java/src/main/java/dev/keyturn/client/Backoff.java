package dev.keyturn.client;

import java.time.Duration;
import java.util.Objects;

/**
 * Exponential backoff with full jitter: before retry {@code n} (0 for the first) the wait is
 * drawn at random from {@code [0, min(max, initial × multiplier^n))}, so that clients cut off
 * together do not come back in step. The numbers are those of every Keyturn client
 * (clients/README.md).
 *
 * @param initial the cap of the first wait
 * @param multiplier the growth of the cap between waits (at least 1)
 * @param max the ceiling of the cap
 */
public record Backoff(Duration initial, double multiplier, Duration max) {
  /** Retries of unary calls: below 100 ms, doubling to 5 s. */
  public static final Backoff CALLS = new Backoff(Duration.ofMillis(100), 2, Duration.ofSeconds(5));

  /** Reconnects of a watch: below 1 s, doubling to 30 s. */
  public static final Backoff WATCH = new Backoff(Duration.ofSeconds(1), 2, Duration.ofSeconds(30));

  public Backoff {
    Objects.requireNonNull(initial, "initial");
    Objects.requireNonNull(max, "max");
    if (initial.isNegative() || max.compareTo(initial) < 0 || multiplier < 1) {
      throw new IllegalArgumentException("backoff needs 0 <= initial <= max and multiplier >= 1");
    }
  }

  /** The longest wait before retry {@code retry} (0 for the first). */
  public Duration cap(int retry) {
    double ceiling = max.toNanos();
    double cap = initial.toNanos();
    for (int i = 0; i < retry && cap < ceiling; i++) {
      cap *= multiplier;
    }
    return Duration.ofNanos((long) Math.min(cap, ceiling));
  }

  /** The wait before retry {@code retry} for a random {@code draw} in [0, 1). */
  public Duration delay(int retry, double draw) {
    return Duration.ofNanos((long) (draw * cap(retry).toNanos()));
  }
}
