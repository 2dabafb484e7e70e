package dev.keyturn.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.ForwardingClientCall;
import io.grpc.ForwardingClientCallListener;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.TlsChannelCredentials;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.WeakHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.Function;
import keyturn.v1.Admin.AuditEvent;
import keyturn.v1.Admin.ListAuditEventsRequest;
import keyturn.v1.Admin.ListAuditEventsResponse;
import keyturn.v1.AdminServiceGrpc;
import keyturn.v1.AdminServiceGrpc.AdminServiceBlockingStub;
import keyturn.v1.Events.ExpiryEvent;
import keyturn.v1.Events.WatchExpiringRequest;
import keyturn.v1.HandleServiceGrpc;
import keyturn.v1.Handles.ListHandlesRequest;
import keyturn.v1.Handles.ListHandlesResponse;
import keyturn.v1.HandleServiceGrpc.HandleServiceBlockingStub;
import keyturn.v1.KeyServiceGrpc;
import keyturn.v1.KeyServiceGrpc.KeyServiceBlockingStub;
import keyturn.v1.Keys.ListKeysRequest;
import keyturn.v1.Keys.ListKeysResponse;
import keyturn.v1.Resources.Handle;
import keyturn.v1.Resources.Key;

/**
 * A channel to one Keyturn server and blocking stubs for its three services, following the
 * policy every Keyturn client shares (clients/README.md): TLS unless the address is loopback,
 * the bearer token on every call, one deadline per unary call (30 s unless the call sets its
 * own with {@code withDeadlineAfter}), retries of the calls the API marks idempotent, and
 * watches that reconnect and resume by themselves.
 *
 * <pre>{@code
 * try (KeyturnClient client = KeyturnClient.builder("127.0.0.1:50051").token(token).build()) {
 *   Key key = client.keys().generateKey(
 *       GenerateKeyRequest.newBuilder().setType("encryption").build()).getKey();
 *   Key same = client.keys().withDeadlineAfter(2, TimeUnit.SECONDS)
 *       .getKey(GetKeyRequest.newBuilder().setKeyId(key.getId()).build());
 * } catch (StatusRuntimeException e) {
 *   ErrorDetails details = ErrorDetails.of(e);  // reason, field violations, retry delay
 * }
 * }</pre>
 */
public final class KeyturnClient implements AutoCloseable {
  /** The deadline of a unary call that sets none, retries included. */
  public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(30);

  /**
   * Keepalive of the channel (clients/README.md): with a call open, a ping after {@code
   * KEEPALIVE_TIME} without a frame from the server, and the connection closed when the ping
   * goes unanswered for {@code KEEPALIVE_TIMEOUT}, so that a watch on a connection that went
   * silent (the server's host gone, a partition) reconnects instead of waiting forever.
   */
  public static final Duration KEEPALIVE_TIME = Duration.ofSeconds(60);

  public static final Duration KEEPALIVE_TIMEOUT = Duration.ofSeconds(20);

  private final ManagedChannel channel;
  private final ScheduledExecutorService scheduler;
  private final RetryingInterceptor retrying;
  private final KeyServiceBlockingStub keys;
  private final HandleServiceBlockingStub handles;
  private final AdminServiceBlockingStub admin;
  private final WatchOptions watchOptions;
  /** Watches to end on {@link #close}, also one waiting to reconnect; held weakly. */
  private final Set<ExpiryWatch> watches =
      Collections.synchronizedSet(Collections.newSetFromMap(new WeakHashMap<>()));

  private KeyturnClient(Builder builder, ManagedChannel channel) {
    this.channel = channel;
    this.scheduler =
        Executors.newSingleThreadScheduledExecutor(
            task -> {
              Thread thread = new Thread(task, "keyturn-retry");
              thread.setDaemon(true);
              return thread;
            });
    this.retrying =
        new RetryingInterceptor(
            builder.retryPolicy,
            scheduler,
            () -> ThreadLocalRandom.current().nextDouble(),
            channel::isShutdown);
    // The last interceptor runs first: the deadline is fixed before any attempt starts, and
    // every attempt's failure on a closed client reads CANCELLED.
    Channel intercepted =
        ClientInterceptors.intercept(
            channel,
            new ClosedClientStatus(channel::isShutdown),
            retrying,
            new DefaultDeadline(builder.defaultTimeout));
    KeyServiceBlockingStub keyStub = KeyServiceGrpc.newBlockingStub(intercepted);
    HandleServiceBlockingStub handleStub = HandleServiceGrpc.newBlockingStub(intercepted);
    AdminServiceBlockingStub adminStub = AdminServiceGrpc.newBlockingStub(intercepted);
    if (builder.token != null) {
      BearerToken credentials = new BearerToken(builder.token, builder.plaintextAllowed());
      keyStub = keyStub.withCallCredentials(credentials);
      handleStub = handleStub.withCallCredentials(credentials);
      adminStub = adminStub.withCallCredentials(credentials);
    }
    this.keys = keyStub;
    this.handles = handleStub;
    this.admin = adminStub;
    this.watchOptions = builder.watchOptions;
  }

  /** A client of the server at {@code address} ("host:port"), configured by the builder. */
  public static Builder builder(String address) {
    return new Builder(address);
  }

  /** KeyService; {@code keys().withDeadlineAfter(...)} sets one call's deadline. */
  public KeyServiceBlockingStub keys() {
    return keys;
  }

  /** HandleService. */
  public HandleServiceBlockingStub handles() {
    return handles;
  }

  /** AdminService. */
  public AdminServiceBlockingStub admin() {
    return admin;
  }

  /**
   * Every key matching {@code request}'s filters, page after page as the caller iterates
   * ({@code page_size} sets the page size; each page is one call with the default deadline). A
   * server that gives a page token again ends the walk with INTERNAL, reason {@code
   * PAGE_TOKEN_REPEATED}; any failed page throws its {@link io.grpc.StatusRuntimeException}.
   */
  public Iterable<Key> allKeys(ListKeysRequest request) {
    return Pages.walk(
        request.getPageToken(),
        token -> {
          ListKeysResponse page = keys.listKeys(request.toBuilder().setPageToken(token).build());
          return new Pages.Page<>(page.getKeysList(), page.getNextPageToken());
        });
  }

  /** Every handle matching {@code request}'s filters, page after page; as {@link #allKeys}. */
  public Iterable<Handle> allHandles(ListHandlesRequest request) {
    return Pages.walk(
        request.getPageToken(),
        token -> {
          ListHandlesResponse page =
              handles.listHandles(request.toBuilder().setPageToken(token).build());
          return new Pages.Page<>(page.getHandlesList(), page.getNextPageToken());
        });
  }

  /** Every audit event matching {@code request}'s filters, page after page. */
  public Iterable<AuditEvent> allAuditEvents(ListAuditEventsRequest request) {
    return Pages.walk(
        request.getPageToken(),
        token -> {
          ListAuditEventsResponse page =
              admin.listAuditEvents(request.toBuilder().setPageToken(token).build());
          return new Pages.Page<>(page.getEventsList(), page.getNextPageToken());
        });
  }

  /** The underlying channel, for other services on the same server. */
  public ManagedChannel channel() {
    return channel;
  }

  /** KeyService.WatchExpiring, reconnecting and resuming by itself; see {@link ExpiryWatch}. */
  public ExpiryWatch watchKeys(WatchExpiringRequest request) {
    return watchKeys(request, watchOptions);
  }

  public ExpiryWatch watchKeys(WatchExpiringRequest request, WatchOptions options) {
    return watch(request, options, keys::watchExpiring);
  }

  /** HandleService.WatchExpiring, reconnecting and resuming by itself. */
  public ExpiryWatch watchHandles(WatchExpiringRequest request) {
    return watchHandles(request, watchOptions);
  }

  public ExpiryWatch watchHandles(WatchExpiringRequest request, WatchOptions options) {
    return watch(request, options, handles::watchExpiring);
  }

  private ExpiryWatch watch(
      WatchExpiringRequest request,
      WatchOptions options,
      Function<WatchExpiringRequest, Iterator<ExpiryEvent>> open) {
    Function<WatchExpiringRequest, Iterator<ExpiryEvent>> reconnecting =
        r -> {
          channel.resetConnectBackoff(); // the watch's backoff decides when, not the channel's
          return open.apply(r);
        };
    ExpiryWatch watch =
        new ExpiryWatch(
            reconnecting,
            request,
            options,
            channel::isShutdown,
            () -> ThreadLocalRandom.current().nextDouble());
    watches.add(watch);
    return watch;
  }

  /**
   * Closes the channel: calls in flight fail with CANCELLED (also a read waiting to be
   * retried), watches end (a thread in {@link ExpiryWatch#hasNext} returns false at once, also
   * while the watch waits to reconnect).
   */
  @Override
  public void close() {
    channel.shutdownNow();
    scheduler.shutdownNow();
    // Calls waiting to retry end with CANCELLED: their next attempt will never run, and
    // their callers would stay blocked.
    retrying.clientClosed();
    List<ExpiryWatch> open;
    synchronized (watches) {
      open = new ArrayList<>(watches);
      watches.clear();
    }
    open.forEach(ExpiryWatch::close);
    try {
      channel.awaitTermination(5, TimeUnit.SECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  /** Settings of a {@link KeyturnClient}. */
  public static final class Builder {
    private final String address;
    private String token;
    private Boolean tls;
    private Path trustedCertificates;
    private Path clientCertificateChain;
    private Path clientKey;
    private String serverName;
    private Duration defaultTimeout = DEFAULT_TIMEOUT;
    private RetryPolicy retryPolicy = RetryPolicy.DEFAULT;
    private WatchOptions watchOptions = WatchOptions.defaults();

    private Builder(String address) {
      this.address = Objects.requireNonNull(address, "address");
    }

    /**
     * Sends {@code authorization: Bearer <token>} on every call. A token a header cannot carry
     * (whitespace, a line break, a control character, non-ASCII) is refused at once with an
     * {@link IllegalArgumentException} that does not repeat it.
     */
    public Builder token(String token) {
      this.token = BearerToken.checked(token);
      return this;
    }

    /** TLS with the system's roots, also to a loopback address. */
    public Builder tls() {
      this.tls = true;
      return this;
    }

    /**
     * Plaintext to any address: for a TLS-terminating proxy next to the client. Loopback
     * addresses are plaintext by default; anything else is TLS unless this is called.
     */
    public Builder plaintext() {
      this.tls = false;
      return this;
    }

    /** TLS trusting the CA certificates in this PEM file instead of the system's roots. */
    public Builder trustedCertificates(Path pem) {
      this.trustedCertificates = Objects.requireNonNull(pem, "pem");
      return tls();
    }

    /** TLS with this client certificate chain and private key (PEM): mutual TLS. */
    public Builder clientCertificate(Path certificateChain, Path privateKey) {
      this.clientCertificateChain = Objects.requireNonNull(certificateChain, "certificateChain");
      this.clientKey = Objects.requireNonNull(privateKey, "privateKey");
      return tls();
    }

    /**
     * TLS, checking the server's certificate against this name when it is not the address's
     * (also to a loopback address, which is otherwise reached in plaintext).
     */
    public Builder serverName(String name) {
      this.serverName = Objects.requireNonNull(name, "name");
      return tls();
    }

    /** The deadline of unary calls that set none (30 s); {@link Duration#ZERO}: none. */
    public Builder defaultTimeout(Duration timeout) {
      this.defaultTimeout = Objects.requireNonNull(timeout, "timeout");
      return this;
    }

    /** How the calls the API marks idempotent are retried ({@link RetryPolicy#DEFAULT}). */
    public Builder retryPolicy(RetryPolicy policy) {
      this.retryPolicy = Objects.requireNonNull(policy, "policy");
      return this;
    }

    /** The options of watches opened without their own ({@link WatchOptions#defaults}). */
    public Builder watchOptions(WatchOptions options) {
      this.watchOptions = Objects.requireNonNull(options, "options");
      return this;
    }

    boolean usesTls() {
      return tls != null ? tls : !CallPolicy.isLoopback(address);
    }

    private boolean plaintextAllowed() {
      return !usesTls();
    }

    private ChannelCredentials credentials() {
      if (!usesTls()) {
        return InsecureChannelCredentials.create();
      }
      TlsChannelCredentials.Builder credentials = TlsChannelCredentials.newBuilder();
      try {
        if (trustedCertificates != null) {
          credentials.trustManager(trustedCertificates.toFile());
        }
        if (clientCertificateChain != null) {
          credentials.keyManager(clientCertificateChain.toFile(), clientKey.toFile());
        }
      } catch (IOException e) {
        throw new UncheckedIOException("reading TLS files", e);
      }
      return credentials.build();
    }

    public KeyturnClient build() {
      ManagedChannelBuilder<?> channel =
          Grpc.newChannelBuilder(address, credentials())
              .keepAliveTime(KEEPALIVE_TIME.toNanos(), TimeUnit.NANOSECONDS)
              .keepAliveTimeout(KEEPALIVE_TIMEOUT.toNanos(), TimeUnit.NANOSECONDS);
      if (serverName != null) {
        channel.overrideAuthority(serverName);
      }
      return new KeyturnClient(this, channel.build());
    }
  }

  /**
   * A unary call that fails because its client was closed ends with CANCELLED ("the client was
   * closed"), as the policy says, rather than the UNAVAILABLE a shut-down channel gives.
   */
  private static final class ClosedClientStatus implements ClientInterceptor {
    private final BooleanSupplier closed;

    ClosedClientStatus(BooleanSupplier closed) {
      this.closed = closed;
    }

    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      ClientCall<ReqT, RespT> call = next.newCall(method, options);
      if (method.getType() != MethodDescriptor.MethodType.UNARY) {
        return call; // a watch ends quietly on close: ExpiryWatch sees to it
      }
      return new ForwardingClientCall.SimpleForwardingClientCall<>(call) {
        @Override
        public void start(Listener<RespT> listener, Metadata headers) {
          super.start(
              new ForwardingClientCallListener.SimpleForwardingClientCallListener<>(listener) {
                @Override
                public void onClose(Status status, Metadata trailers) {
                  if (!status.isOk() && closed.getAsBoolean()) {
                    status =
                        RetryingInterceptor.CLIENT_CLOSED.withCause(
                            status.asRuntimeException(trailers));
                  }
                  super.onClose(status, trailers);
                }
              },
              headers);
        }
      };
    }
  }

  /** Gives a unary call without a deadline the default one, before its first attempt. */
  private static final class DefaultDeadline implements ClientInterceptor {
    private final Duration timeout;

    DefaultDeadline(Duration timeout) {
      this.timeout = timeout;
    }

    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      // Server streams (WatchExpiring) are meant to stay open: no default deadline there.
      if (options.getDeadline() == null
          && !timeout.isZero()
          && method.getType() == MethodDescriptor.MethodType.UNARY) {
        options = options.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
      }
      return next.newCall(method, options);
    }
  }
}
