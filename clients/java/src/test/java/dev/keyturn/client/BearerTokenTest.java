package dev.keyturn.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Attributes;
import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.SecurityLevel;
import io.grpc.Status;
import keyturn.v1.KeyServiceGrpc;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The bearer token travels in clear only when plaintext was chosen (loopback, or explicitly). */
class BearerTokenTest {
  /** What the credentials decided: the headers they added, or the status they failed with. */
  private static final class Outcome extends CallCredentials.MetadataApplier {
    Metadata headers;
    Status failure;

    @Override
    public void apply(Metadata headers) {
      this.headers = headers;
    }

    @Override
    public void fail(Status status) {
      this.failure = status;
    }
  }

  private static Outcome apply(BearerToken token, SecurityLevel level) {
    Outcome outcome = new Outcome();
    CallCredentials.RequestInfo info =
        new CallCredentials.RequestInfo() {
          @Override
          public MethodDescriptor<?, ?> getMethodDescriptor() {
            return KeyServiceGrpc.getGetKeyMethod();
          }

          @Override
          public SecurityLevel getSecurityLevel() {
            return level;
          }

          @Override
          public String getAuthority() {
            return "keyturn.example:443";
          }

          @Override
          public Attributes getTransportAttrs() {
            return Attributes.EMPTY;
          }
        };
    token.applyRequestMetadata(info, Runnable::run, outcome);
    return outcome;
  }

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  @Test
  void aTokenGoesOverTls() {
    Outcome outcome = apply(new BearerToken("kt_secret"), SecurityLevel.PRIVACY_AND_INTEGRITY);
    assertEquals("Bearer kt_secret", outcome.headers.get(AUTHORIZATION));
  }

  @Test
  void aTokenIsNotSentInClearUnlessPlaintextWasChosen() {
    Outcome refused = apply(new BearerToken("kt_secret"), SecurityLevel.NONE);
    assertNull(refused.headers);
    assertEquals(Status.Code.UNAUTHENTICATED, refused.failure.getCode());

    Outcome chosen = apply(new BearerToken("kt_secret", true), SecurityLevel.NONE);
    assertEquals("Bearer kt_secret", chosen.headers.get(AUTHORIZATION));
  }

  /**
   * A token read with Files.readString keeps its line break; grpc-java would log the header
   * value (the token, as bytes) and send no authorization. It is refused up front instead,
   * without being repeated, as the Python and Node clients do.
   */
  @ParameterizedTest(name = "{0}")
  @ValueSource(
      strings = {
        "kt_secret\n", "kt_secret\r\n", " kt_secret", "kt_se cret", "kt_se\u0001cret",
        "kt_s\u00e9cret"
      })
  void aTokenAHeaderCannotCarryIsRefusedWithoutRepeatingIt(String token) {
    IllegalArgumentException built =
        assertThrows(
            IllegalArgumentException.class,
            () -> KeyturnClient.builder("127.0.0.1:50051").token(token));
    IllegalArgumentException direct =
        assertThrows(IllegalArgumentException.class, () -> new BearerToken(token));
    for (IllegalArgumentException refused : new IllegalArgumentException[] {built, direct}) {
      assertFalse(refused.getMessage().contains("secret"), refused.getMessage());
      assertFalse(refused.getMessage().contains("cret"), refused.getMessage());
    }
  }
}
