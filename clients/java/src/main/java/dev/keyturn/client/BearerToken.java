package dev.keyturn.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.SecurityLevel;
import io.grpc.Status;
import java.util.Objects;
import java.util.concurrent.Executor;

/**
 * Sends {@code authorization: Bearer <token>} with every call, as Keyturn expects; over a
 * connection without privacy only when plaintext was chosen (a loopback address, or an explicit
 * {@link KeyturnClient.Builder#plaintext}), so that a token never crosses a network in clear
 * by accident.
 */
public final class BearerToken extends CallCredentials {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final String token;
  private final boolean plaintextAllowed;

  /** A token sent only over TLS (privacy and integrity). */
  public BearerToken(String token) {
    this(token, false);
  }

  BearerToken(String token, boolean plaintextAllowed) {
    this.token = Objects.requireNonNull(token, "token");
    this.plaintextAllowed = plaintextAllowed;
  }

  @Override
  public void applyRequestMetadata(
      RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
    if (!plaintextAllowed && requestInfo.getSecurityLevel() != SecurityLevel.PRIVACY_AND_INTEGRITY) {
      applier.fail(
          Status.UNAUTHENTICATED.withDescription(
              "refusing to send the bearer token without TLS; choose plaintext explicitly"));
      return;
    }
    Metadata headers = new Metadata();
    headers.put(AUTHORIZATION, "Bearer " + token);
    applier.apply(headers);
  }
}
