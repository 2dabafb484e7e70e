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
    this.token = checked(token);
    this.plaintextAllowed = plaintextAllowed;
  }

  /**
   * {@code token}, when a header can carry it: visible ASCII only. Anything else (the line
   * break {@code Files.readString} keeps at the end of a token file, a control character,
   * non-ASCII) is refused here with a message that does not repeat it. Sent as it is, grpc-java
   * would log the whole header value, token and all, as a WARNING and send no authorization at
   * all (the server then answers "missing credentials"); non-ASCII would be changed to '?'.
   */
  static String checked(String token) {
    Objects.requireNonNull(token, "token");
    if (!token.chars().allMatch(c -> c >= 0x21 && c <= 0x7e)) {
      throw new IllegalArgumentException(
          "the bearer token ("
              + token.length()
              + " characters) holds characters a header cannot carry: whitespace, a line break,"
              + " a control character or non-ASCII (trim what you read from a file)");
    }
    return token;
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
