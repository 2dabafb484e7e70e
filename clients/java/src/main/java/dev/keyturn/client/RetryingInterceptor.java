package dev.keyturn.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.Deadline;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import java.time.Duration;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.DoubleSupplier;

/**
 * Retries the unary calls the API marks idempotent (see {@link CallPolicy}) after UNAVAILABLE,
 * or RESOURCE_EXHAUSTED with a RetryInfo, per a {@link RetryPolicy}. Every attempt runs with
 * the call's own {@link CallOptions}, so it carries the one deadline fixed when the call
 * started (gRPC deadlines are absolute); when the next wait would end past it, the last
 * failure is the call's outcome at once. Other calls pass through untouched.
 */
final class RetryingInterceptor implements ClientInterceptor {
  /** The outcome of a call whose client was closed while it ran or waited to retry. */
  static final Status CLIENT_CLOSED = Status.CANCELLED.withDescription("the client was closed");

  private final RetryPolicy policy;
  private final ScheduledExecutorService scheduler;
  private final DoubleSupplier draw;
  private final BooleanSupplier clientClosed;
  /** Calls between two attempts: close() ends them, since their next attempt will not run. */
  private final Set<RetryingCall<?, ?>> waiting = ConcurrentHashMap.newKeySet();

  RetryingInterceptor(
      RetryPolicy policy,
      ScheduledExecutorService scheduler,
      DoubleSupplier draw,
      BooleanSupplier clientClosed) {
    this.policy = policy;
    this.scheduler = scheduler;
    this.draw = draw;
    this.clientClosed = clientClosed;
  }

  /** The client closed: every call waiting to retry ends now with {@link #CLIENT_CLOSED}. */
  void clientClosed() {
    for (RetryingCall<?, ?> call : waiting) {
      call.abandon();
    }
  }

  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
    if (method.getType() != MethodDescriptor.MethodType.UNARY || !CallPolicy.retryable(method)) {
      return next.newCall(method, options);
    }
    return new RetryingCall<>(method, options, next);
  }

  /**
   * One unary call made of attempts. The request is kept until the call ends; each attempt's
   * headers, response and status are held back until it is known to be the last.
   */
  private final class RetryingCall<ReqT, RespT> extends ClientCall<ReqT, RespT> {
    private final MethodDescriptor<ReqT, RespT> method;
    private final CallOptions options;
    private final Channel next;
    private final Object lock = new Object();
    private Listener<RespT> listener;
    private Metadata headers;
    private ReqT request;
    private int requested;
    private int attempts;
    private int retries;
    private boolean done;
    private ClientCall<ReqT, RespT> current;
    private ScheduledFuture<?> pending;

    RetryingCall(MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      this.method = method;
      this.options = options;
      this.next = next;
    }

    @Override
    public void start(Listener<RespT> listener, Metadata headers) {
      this.listener = listener;
      this.headers = headers;
    }

    @Override
    public void request(int numMessages) {
      ClientCall<ReqT, RespT> call;
      synchronized (lock) {
        requested += numMessages;
        call = current;
      }
      if (call != null) {
        call.request(numMessages);
      }
    }

    @Override
    public void sendMessage(ReqT message) {
      request = message;
    }

    @Override
    public void halfClose() {
      attempt();
    }

    @Override
    public void cancel(String message, Throwable cause) {
      ClientCall<ReqT, RespT> call;
      synchronized (lock) {
        if (done) {
          return;
        }
        call = current;
        if (pending != null) {
          pending.cancel(false);
        }
        if (call == null) {
          done = true; // between attempts: attempt() will not start another
        }
      }
      if (call != null) {
        call.cancel(message, cause); // its close is the call's outcome
      } else {
        Status cancelled = Status.CANCELLED.withDescription(message).withCause(cause);
        deliver(null, null, cancelled, new Metadata());
      }
    }

    @Override
    public boolean isReady() {
      ClientCall<ReqT, RespT> call = current;
      return call != null && call.isReady();
    }

    /** Ends the call between two attempts, its client closed. */
    void abandon() {
      synchronized (lock) {
        if (done || current != null) {
          return; // over, or an attempt runs: its own failure ends the call
        }
        done = true;
        if (pending != null) {
          pending.cancel(false);
        }
      }
      waiting.remove(this);
      deliver(null, null, CLIENT_CLOSED, new Metadata());
    }

    private void attempt() {
      waiting.remove(this);
      ClientCall<ReqT, RespT> call = next.newCall(method, options);
      int wanted;
      synchronized (lock) {
        if (done) {
          return;
        }
        attempts++;
        pending = null;
        current = call;
        wanted = requested;
      }
      Metadata copy = new Metadata();
      copy.merge(headers);
      call.start(new Attempt(), copy);
      if (wanted > 0) {
        call.request(wanted);
      }
      call.sendMessage(request);
      call.halfClose();
    }

    /** Retries after {@code wait}, or returns false when that would pass the deadline. */
    private boolean retryAfter(Duration wait) {
      Deadline deadline = options.getDeadline();
      if (deadline != null && deadline.timeRemaining(TimeUnit.NANOSECONDS) <= wait.toNanos()) {
        return false;
      }
      synchronized (lock) {
        if (done) {
          return true; // cancelled meanwhile: cancel() has delivered the outcome
        }
        try {
          pending = scheduler.schedule(this::attempt, wait.toNanos(), TimeUnit.NANOSECONDS);
        } catch (RejectedExecutionException closing) {
          return false; // the client is closing: this failure is the outcome
        }
        current = null;
        waiting.add(this);
      }
      if (clientClosed.getAsBoolean()) {
        abandon(); // closed while this retry was being scheduled
      }
      return true;
    }

    private void deliver(
        Metadata responseHeaders,
        RespT response,
        Status status,
        Metadata trailers) {
      Runnable outcome =
          () -> {
            if (responseHeaders != null) {
              listener.onHeaders(responseHeaders);
            }
            if (response != null) {
              listener.onMessage(response);
            }
            listener.onClose(status, trailers);
          };
      // Blocking stubs wait on their own executor: the outcome must be queued there.
      Executor executor = options.getExecutor();
      if (executor != null) {
        executor.execute(outcome);
      } else {
        outcome.run();
      }
    }

    /** Listens to one attempt and decides, at its close, whether another follows. */
    private final class Attempt extends Listener<RespT> {
      private Metadata responseHeaders;
      private RespT response;

      @Override
      public void onHeaders(Metadata headers) {
        responseHeaders = headers;
      }

      @Override
      public void onMessage(RespT message) {
        response = message;
      }

      @Override
      public void onClose(Status status, Metadata trailers) {
        boolean closed = !status.isOk() && clientClosed.getAsBoolean();
        if (closed) {
          // Failed because the channel shut down (UNAVAILABLE): no retry, and the outcome
          // says why, as for a watch.
          status = CLIENT_CLOSED.withCause(status.asRuntimeException(trailers));
        }
        boolean again;
        synchronized (lock) {
          again =
              !done
                  && !closed
                  && !status.isOk()
                  && policy.allowsAnother(attempts)
                  && CallPolicy.retried(status, trailers);
        }
        if (again) {
          Duration backoff = policy.backoff().delay(retries++, draw.getAsDouble());
          Duration floor = CallPolicy.retryDelay(status, trailers).orElse(Duration.ZERO);
          if (retryAfter(backoff.compareTo(floor) >= 0 ? backoff : floor)) {
            return;
          }
          if (clientClosed.getAsBoolean()) { // refused because the client closed meanwhile
            status = CLIENT_CLOSED.withCause(status.asRuntimeException(trailers));
          }
        }
        synchronized (lock) {
          if (done) {
            return;
          }
          done = true;
        }
        deliver(responseHeaders, response, status, trailers);
      }
    }
  }
}
