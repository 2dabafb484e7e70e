package dev.keyturn.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import keyturn.v1.AdminServiceGrpc;
import keyturn.v1.AdminServiceGrpc.AdminServiceBlockingStub;
import keyturn.v1.HandleServiceGrpc;
import keyturn.v1.HandleServiceGrpc.HandleServiceBlockingStub;
import keyturn.v1.KeyServiceGrpc;
import keyturn.v1.KeyServiceGrpc.KeyServiceBlockingStub;

/**
 * A channel to one Keyturn server and blocking stubs for its three services, each call
 * carrying the bearer token and a default deadline.
 *
 * <pre>{@code
 * try (KeyturnClient client = KeyturnClient.connect("127.0.0.1:50051", token)) {
 *   Key key = client.keys().generateKey(
 *       GenerateKeyRequest.newBuilder().setType("encryption").build()).getKey();
 * } catch (StatusRuntimeException e) {
 *   ErrorDetails details = ErrorDetails.of(e);  // reason, field violations
 * }
 * }</pre>
 */
public final class KeyturnClient implements AutoCloseable {
  /** Applied to calls that set no deadline of their own ({@code stub.withDeadlineAfter}). */
  public static final Duration DEFAULT_DEADLINE = Duration.ofSeconds(30);

  private final ManagedChannel channel;
  private final KeyServiceBlockingStub keys;
  private final HandleServiceBlockingStub handles;
  private final AdminServiceBlockingStub admin;

  /** Uses {@code channel} (e.g. one built with TLS credentials); {@link #close} shuts it down. */
  public KeyturnClient(ManagedChannel channel, String token) {
    this.channel = channel;
    BearerToken credentials = new BearerToken(token);
    Channel withDeadline = ClientInterceptors.intercept(channel, new DefaultDeadline());
    this.keys = KeyServiceGrpc.newBlockingStub(withDeadline).withCallCredentials(credentials);
    this.handles = HandleServiceGrpc.newBlockingStub(withDeadline).withCallCredentials(credentials);
    this.admin = AdminServiceGrpc.newBlockingStub(withDeadline).withCallCredentials(credentials);
  }

  /** Connects in plaintext to {@code address} ("host:port"), as the loopback test server listens. */
  public static KeyturnClient connect(String address, String token) {
    return new KeyturnClient(
        Grpc.newChannelBuilder(address, InsecureChannelCredentials.create()).build(), token);
  }

  /** Connects to KEYTURN_ADDRESS with KEYTURN_TOKEN, the variables the test scripts set. */
  public static KeyturnClient fromEnvironment() {
    return connect(requireEnv("KEYTURN_ADDRESS"), requireEnv("KEYTURN_TOKEN"));
  }

  public KeyServiceBlockingStub keys() {
    return keys;
  }

  public HandleServiceBlockingStub handles() {
    return handles;
  }

  public AdminServiceBlockingStub admin() {
    return admin;
  }

  public ManagedChannel channel() {
    return channel;
  }

  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  private static String requireEnv(String name) {
    String value = System.getenv(name);
    if (value == null || value.isBlank()) {
      throw new IllegalStateException(name + " is not set");
    }
    return value;
  }

  /** Gives every call a deadline, so that a stalled server fails a call instead of hanging it. */
  private static final class DefaultDeadline implements ClientInterceptor {
    @Override
    public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
        MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
      // Server streams (WatchExpiring) are meant to stay open: no default deadline there.
      if (options.getDeadline() == null && method.getType() == MethodDescriptor.MethodType.UNARY) {
        options = options.withDeadlineAfter(DEFAULT_DEADLINE.toMillis(), TimeUnit.MILLISECONDS);
      }
      return next.newCall(method, options);
    }
  }
}
