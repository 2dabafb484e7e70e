package dev.keyturn.client;

import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Objects;
import java.util.Optional;

/**
 * How a watch behaves: its reconnect backoff, whether HEARTBEAT events are delivered, who is
 * told of each reconnect, and how long a stream may stay silent.
 *
 * @param backoff reconnect waits ({@link Backoff#WATCH} by default)
 * @param heartbeats also deliver HEARTBEAT events (they always advance the resume point)
 * @param onReconnect told before each reconnect: the failure (empty for a clean end of stream)
 *     and the wait
 * @param silence when a stream that brings nothing is given up ({@link Silence#WATCH})
 */
public record WatchOptions(
    Backoff backoff, boolean heartbeats, ReconnectListener onReconnect, Silence silence) {
  /** Told before each reconnect of a watch. */
  @FunctionalInterface
  public interface ReconnectListener {
    void reconnecting(Optional<StatusRuntimeException> failure, Duration wait);
  }

  public WatchOptions {
    Objects.requireNonNull(backoff, "backoff");
    Objects.requireNonNull(onReconnect, "onReconnect");
    Objects.requireNonNull(silence, "silence");
  }

  /** With the policy's silence ({@link Silence#WATCH}), as before it could be chosen. */
  public WatchOptions(Backoff backoff, boolean heartbeats, ReconnectListener onReconnect) {
    this(backoff, heartbeats, onReconnect, Silence.WATCH);
  }

  /** The policy's backoff and silence, no heartbeats, nobody told. */
  public static WatchOptions defaults() {
    return new WatchOptions(Backoff.WATCH, false, (failure, wait) -> {}, Silence.WATCH);
  }

  public WatchOptions withBackoff(Backoff backoff) {
    return new WatchOptions(backoff, heartbeats, onReconnect, silence);
  }

  public WatchOptions withHeartbeats(boolean heartbeats) {
    return new WatchOptions(backoff, heartbeats, onReconnect, silence);
  }

  public WatchOptions withReconnectListener(ReconnectListener onReconnect) {
    return new WatchOptions(backoff, heartbeats, onReconnect, silence);
  }

  public WatchOptions withSilence(Silence silence) {
    return new WatchOptions(backoff, heartbeats, onReconnect, silence);
  }
}
