package dev.keyturn.client;

import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import io.grpc.Context;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Optional;
import java.util.OptionalLong;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.DoubleSupplier;
import java.util.function.Function;
import keyturn.v1.Events.EventKind;
import keyturn.v1.Events.ExpiryEvent;
import keyturn.v1.Events.WatchExpiringRequest;

/**
 * A WatchExpiring subscription that outlives connections and server restarts, as a blocking
 * {@link Iterator} of {@link ExpiryEvent}.
 *
 * <p>It remembers the last sequence it saw (an event's {@code sequence}, or the {@code
 * latest_sequence} of a HEARTBEAT or SNAPSHOT_COMPLETE) and, when the stream breaks, reopens it
 * with {@code resume_after} set to it, after a random wait below a cap of 1 s doubling to 30 s
 * (back to 1 s once a stream delivered a message, and never less than a RetryInfo asks). The
 * server replays what happened meanwhile and replays at or before the resume point are
 * dropped, so each event arrives once and in order. Codes another try cannot fix
 * (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED,
 * FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, DATA_LOSS) end it: {@link #hasNext} throws
 * their {@link StatusRuntimeException}. {@link #close} (from any thread) or closing the client
 * ends it quietly: {@code hasNext} returns false.
 *
 * <p>A server whose event loop is stuck still answers HTTP/2 pings, so keepalive never notices
 * it. The server says how often it sends a HEARTBEAT ({@code heartbeat_interval} on HEARTBEAT
 * and SNAPSHOT_COMPLETE); once the watch knows it, a stream that brings no message at all for
 * three intervals (at least 5 s; {@link WatchOptions#silence}) is cancelled and resumed like a
 * dropped one, and the reconnect listener is told an UNAVAILABLE with ErrorInfo reason {@code
 * HEARTBEAT_MISSED}. A server that does not say (an older one) is waited for.
 *
 * <pre>{@code
 * try (ExpiryWatch watch = client.watchKeys(WatchExpiringRequest.getDefaultInstance())) {
 *   while (watch.hasNext()) {
 *     ExpiryEvent event = watch.next();
 *     save(watch.lastSequence());
 *   }
 * }
 * }</pre>
 */
public final class ExpiryWatch implements Iterator<ExpiryEvent>, AutoCloseable {
  /**
   * Ends streams that stayed silent too long: one daemon thread for every watch. Each message
   * cancels its watchdog, so cancelled ones leave the queue at once (by default they would stay
   * until their time: a busy watch would pile up one per message for 90 s).
   */
  private static final ScheduledThreadPoolExecutor WATCHDOGS = watchdogs();

  private static ScheduledThreadPoolExecutor watchdogs() {
    ScheduledThreadPoolExecutor executor =
        new ScheduledThreadPoolExecutor(
            1,
            task -> {
              Thread thread = new Thread(task, "keyturn-watch-silence");
              thread.setDaemon(true);
              return thread;
            });
    executor.setRemoveOnCancelPolicy(true);
    return executor;
  }

  private final Function<WatchExpiringRequest, Iterator<ExpiryEvent>> open;
  private final WatchExpiringRequest request;
  private final WatchOptions options;
  private final BooleanSupplier clientClosed;
  private final DoubleSupplier draw;
  private final Object lock = new Object();
  private Long last;
  private int reconnects;
  private int retry;
  private boolean closed;
  private Context.CancellableContext streamContext;
  private Iterator<ExpiryEvent> stream;
  private ExpiryEvent ahead;
  /** The server's heartbeat interval, once it said (kept across reconnects: a resumed stream
   * says it only with its first heartbeat). */
  private Optional<Duration> heartbeatInterval = Optional.empty();
  /** Set by the watchdog that ended the current stream: how long it had been silent. */
  private Duration silentFor;

  ExpiryWatch(
      Function<WatchExpiringRequest, Iterator<ExpiryEvent>> open,
      WatchExpiringRequest request,
      WatchOptions options,
      BooleanSupplier clientClosed,
      DoubleSupplier draw) {
    this.open = open;
    this.request = request;
    this.options = options;
    this.clientClosed = clientClosed;
    this.draw = draw;
    this.last = request.hasResumeAfter() ? request.getResumeAfter() : null;
  }

  /** The resume point to persist: pass it as {@code resume_after} to continue elsewhere. */
  public OptionalLong lastSequence() {
    synchronized (lock) {
      return last == null ? OptionalLong.empty() : OptionalLong.of(last);
    }
  }

  /** How many times the stream was opened again after it broke. */
  public int reconnects() {
    synchronized (lock) {
      return reconnects;
    }
  }

  @Override
  public boolean hasNext() {
    while (ahead == null) {
      if (isClosed()) {
        return false;
      }
      StatusRuntimeException failure = null;
      try {
        Iterator<ExpiryEvent> events = stream != null ? stream : openStream();
        if (awaitNext(events)) {
          ExpiryEvent event = events.next();
          retry = 0; // a message resets the backoff
          if (accept(event)) {
            ahead = event;
          }
          continue;
        }
      } catch (StatusRuntimeException e) {
        if (isClosed()) {
          return false;
        }
        Duration silence = silentFor();
        if (silence != null) {
          e = silenceError(silence);
        }
        if (CallPolicy.WATCH_ENDS_ON.contains(e.getStatus().getCode())) {
          stream = null;
          throw e;
        }
        failure = e;
      }
      stream = null;
      if (!pause(failure)) {
        return false;
      }
    }
    return true;
  }

  @Override
  public ExpiryEvent next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the watch has ended");
    }
    ExpiryEvent event = ahead;
    ahead = null;
    return event;
  }

  /** Ends the watch and its stream; a thread blocked in {@link #hasNext} returns false. */
  @Override
  public void close() {
    Context.CancellableContext context;
    synchronized (lock) {
      closed = true;
      context = streamContext;
      lock.notifyAll();
    }
    if (context != null) {
      context.cancel(Status.CANCELLED.withDescription("watch closed").asRuntimeException());
    }
  }

  /**
   * Whether {@code events} has a next message, waiting for it at most as long as the server's
   * heartbeats allow: the watchdog then cancels the stream. It runs only while waiting for the
   * server, never while the caller holds an event.
   */
  private boolean awaitNext(Iterator<ExpiryEvent> events) {
    Optional<Duration> limit = options.silence().limit(heartbeatInterval);
    ScheduledFuture<?> watchdog = null;
    if (limit.isPresent()) {
      Duration after = limit.get();
      watchdog = WATCHDOGS.schedule(() -> endSilent(after), after.toNanos(), TimeUnit.NANOSECONDS);
    }
    try {
      return events.hasNext();
    } finally {
      if (watchdog != null) {
        watchdog.cancel(false);
      }
    }
  }

  private void endSilent(Duration after) {
    Context.CancellableContext context;
    synchronized (lock) {
      silentFor = after;
      context = streamContext;
    }
    if (context != null) {
      context.cancel(Status.UNAVAILABLE.withDescription("silent stream").asRuntimeException());
    }
  }

  private Duration silentFor() {
    synchronized (lock) {
      return silentFor;
    }
  }

  private StatusRuntimeException silenceError(Duration after) {
    String message =
        "no message from the server in "
            + after.toMillis() / 1000.0
            + " s (it sends a heartbeat every "
            + heartbeatInterval.map(d -> d.toMillis() / 1000.0 + " s").orElse("?")
            + "): giving up on the stream";
    ErrorInfo info = ErrorInfo.newBuilder().setReason("HEARTBEAT_MISSED").build();
    return StatusProto.toStatusRuntimeException(
        com.google.rpc.Status.newBuilder()
            .setCode(Code.UNAVAILABLE_VALUE)
            .setMessage(message)
            .addDetails(Any.pack(info))
            .build());
  }

  private boolean isClosed() {
    synchronized (lock) {
      return closed || clientClosed.getAsBoolean();
    }
  }

  private Iterator<ExpiryEvent> openStream() {
    WatchExpiringRequest.Builder next = request.toBuilder();
    Context.CancellableContext context = Context.current().withCancellation();
    synchronized (lock) {
      if (last != null) {
        next.setResumeAfter(last);
      }
      if (streamContext != null) {
        streamContext.cancel(null);
      }
      streamContext = context;
      silentFor = null;
    }
    WatchExpiringRequest built = next.build();
    Iterator<ExpiryEvent> opened;
    try {
      opened = context.call(() -> open.apply(built)); // the call belongs to its context
    } catch (RuntimeException e) {
      throw e;
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
    stream = opened;
    return opened;
  }

  /** Waits before the next reconnect; false when the watch was closed meanwhile. */
  private boolean pause(StatusRuntimeException failure) {
    Duration wait = options.backoff().delay(retry++, draw.getAsDouble());
    if (failure != null) {
      Optional<Duration> floor =
          CallPolicy.retryDelay(failure.getStatus(), trailersOf(failure));
      if (floor.isPresent() && floor.get().compareTo(wait) > 0) {
        wait = floor.get();
      }
    }
    options.onReconnect().reconnecting(Optional.ofNullable(failure), wait);
    long until = System.nanoTime() + wait.toNanos();
    synchronized (lock) {
      while (!closed && !clientClosed.getAsBoolean()) {
        long left = until - System.nanoTime();
        if (left <= 0) {
          reconnects++;
          return true;
        }
        try {
          lock.wait(Math.max(1, left / 1_000_000));
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          closed = true;
        }
      }
      return false;
    }
  }

  private static io.grpc.Metadata trailersOf(StatusRuntimeException e) {
    return e.getTrailers() == null ? new io.grpc.Metadata() : e.getTrailers();
  }

  /** Moves the resume point past {@code event}; false for what the caller must not see. */
  private boolean accept(ExpiryEvent event) {
    synchronized (lock) {
      if (event.getKind() == EventKind.EVENT_KIND_HEARTBEAT
          || event.getKind() == EventKind.EVENT_KIND_SNAPSHOT_COMPLETE) {
        if (last == null || event.getLatestSequence() > last) {
          last = event.getLatestSequence();
        }
        heartbeatInterval =
            event.hasHeartbeatInterval()
                ? Optional.of(
                    Duration.ofSeconds(
                        event.getHeartbeatInterval().getSeconds(),
                        event.getHeartbeatInterval().getNanos()))
                : Optional.empty();
        return event.getKind() == EventKind.EVENT_KIND_SNAPSHOT_COMPLETE || options.heartbeats();
      }
      if (event.getSequence() == 0) {
        return true; // an item of the initial snapshot
      }
      if (last != null && event.getSequence() <= last) {
        return false; // replayed after a reconnect: delivered already
      }
      last = event.getSequence();
      return true;
    }
  }
}
