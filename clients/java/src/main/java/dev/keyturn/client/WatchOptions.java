package dev.keyturn.client;

import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Objects;
import java.util.Optional;

/**
 * How a watch behaves: its reconnect backoff, whether HEARTBEAT events are delivered, and who
 * is told of each reconnect.
 *
 * @param backoff reconnect waits ({@link Backoff#WATCH} by default)
 * @param heartbeats also deliver HEARTBEAT events (they always advance the resume point)
 * @param onReconnect told before each reconnect: the failure (empty for a clean end of stream)
 *     and the wait
 */
public record WatchOptions(Backoff backoff, boolean heartbeats, ReconnectListener onReconnect) {
  /** Told before each reconnect of a watch. */
  @FunctionalInterface
  public interface ReconnectListener {
    void reconnecting(Optional<StatusRuntimeException> failure, Duration wait);
  }

  public WatchOptions {
    Objects.requireNonNull(backoff, "backoff");
    Objects.requireNonNull(onReconnect, "onReconnect");
  }

  /** The policy's backoff, no heartbeats, nobody told. */
  public static WatchOptions defaults() {
    return new WatchOptions(Backoff.WATCH, false, (failure, wait) -> {});
  }

  public WatchOptions withBackoff(Backoff backoff) {
    return new WatchOptions(backoff, heartbeats, onReconnect);
  }

  public WatchOptions withHeartbeats(boolean heartbeats) {
    return new WatchOptions(backoff, heartbeats, onReconnect);
  }

  public WatchOptions withReconnectListener(ReconnectListener onReconnect) {
    return new WatchOptions(backoff, heartbeats, onReconnect);
  }
}
