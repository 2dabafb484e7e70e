package dev.keyturn.client;

import java.time.Duration;
import java.util.Objects;
import java.util.Optional;

/**
 * How long a watch waits for the next message of any kind once the server said how often it
 * sends heartbeats ({@code heartbeat_interval} on HEARTBEAT and SNAPSHOT_COMPLETE): {@code
 * heartbeats} intervals, and never less than {@code floor}. A server whose event loop is stuck
 * still answers HTTP/2 pings, so keepalive never notices it; its silence does. The numbers are
 * those of every Keyturn client (clients/README.md).
 *
 * @param heartbeats how many intervals without a message end a stream (at least 1)
 * @param floor the shortest silence that ends one (a server set to sub-second heartbeats, or
 *     one pausing for a moment under load, is not stuck)
 */
public record Silence(double heartbeats, Duration floor) {
  /** Three heartbeat intervals, at least 5 s. */
  public static final Silence WATCH = new Silence(3, Duration.ofSeconds(5));

  public Silence {
    Objects.requireNonNull(floor, "floor");
    if (heartbeats < 1 || floor.isNegative()) {
      throw new IllegalArgumentException("silence needs heartbeats >= 1 and floor >= 0");
    }
  }

  /** How long a stream may stay silent when heartbeats come every {@code interval}; empty
   * (no limit) when the server did not say. */
  public Optional<Duration> limit(Optional<Duration> interval) {
    return interval
        .filter(d -> d.compareTo(Duration.ZERO) > 0)
        .map(d -> Duration.ofNanos((long) (heartbeats * d.toNanos())))
        .map(d -> d.compareTo(floor) < 0 ? floor : d);
  }
}
