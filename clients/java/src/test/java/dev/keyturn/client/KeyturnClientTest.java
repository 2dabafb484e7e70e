package dev.keyturn.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import keyturn.v1.Handles.GenerateHandleRequest;
import keyturn.v1.Handles.GenerateHandleResponse;
import keyturn.v1.Handles.ValidateHandleRequest;
import keyturn.v1.Handles.Validation;
import keyturn.v1.Keys.DecryptRequest;
import keyturn.v1.Keys.DecryptResponse;
import keyturn.v1.Keys.DisableKeyVersionRequest;
import keyturn.v1.Keys.EnableKeyVersionRequest;
import keyturn.v1.Keys.EncryptRequest;
import keyturn.v1.Keys.EncryptResponse;
import keyturn.v1.Keys.GenerateKeyRequest;
import keyturn.v1.Keys.GetKeyRequest;
import keyturn.v1.Keys.ListKeysRequest;
import keyturn.v1.Keys.RotateKeyRequest;
import keyturn.v1.Resources.HandleStatus;
import keyturn.v1.Resources.Key;
import keyturn.v1.Resources.KeyStatus;
import keyturn.v1.Resources.KeyVersion;
import keyturn.v1.Resources.KeyVersionState;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The generated stubs and the client against a live server (see {@link LiveServer}): keys,
 * handles, errors and their details, a per-call deadline.
 */
class KeyturnClientTest {
  private static final String USER = "user123";
  private static KeyturnClient client;

  @BeforeAll
  static void connect() {
    if (LiveServer.configured()) {
      client = LiveServer.client();
    } else {
      // Printed as well: surefire shows an assumption's message only in its reports.
      System.err.println("KeyturnClientTest skipped: " + LiveServer.UNSET);
    }
  }

  @BeforeEach
  void requireServer() {
    assumeTrue(client != null, LiveServer.UNSET);
  }

  @AfterAll
  static void close() {
    if (client != null) {
      client.close();
    }
  }

  @Test
  void anEncryptionKeyDecryptsWhatItEncrypted() {
    Key key =
        client
            .keys()
            .generateKey(
                GenerateKeyRequest.newBuilder()
                    .setType("encryption")
                    .putMetadata("purpose", "data-encryption")
                    .putMetadata("environment", "production")
                    .setUserId(USER)
                    .build())
            .getKey();
    assertEquals("encryption", key.getType());
    assertEquals(KeyStatus.KEY_STATUS_ACTIVE, key.getStatus());
    assertEquals("data-encryption", key.getMetadataMap().get("purpose"));

    ByteString plaintext = ByteString.copyFrom("attack at dawn", StandardCharsets.UTF_8);
    ByteString associated = ByteString.copyFrom("order-42", StandardCharsets.UTF_8);
    EncryptResponse sealed =
        client
            .keys()
            .encrypt(
                EncryptRequest.newBuilder()
                    .setKeyId(key.getId())
                    .setPlaintext(plaintext)
                    .setAssociatedData(associated)
                    .build());
    assertEquals(1, sealed.getKeyVersion());
    assertFalse(sealed.getCiphertext().isEmpty());

    DecryptResponse opened =
        client
            .keys()
            .decrypt(
                DecryptRequest.newBuilder()
                    .setKeyId(key.getId())
                    .setCiphertext(sealed.getCiphertext())
                    .setAssociatedData(associated)
                    .build());
    assertArrayEquals(plaintext.toByteArray(), opened.getPlaintext().toByteArray());
    assertTrue(opened.getUsedPrimary());
  }

  @Test
  void aDisabledVersionRefusesToDecryptUntilItIsEnabledAgain() {
    String keyId =
        client
            .keys()
            .generateKey(GenerateKeyRequest.newBuilder().setType("encryption").build())
            .getKey()
            .getId();
    ByteString plaintext = ByteString.copyFrom("old secret", StandardCharsets.UTF_8);
    EncryptResponse sealed =
        client
            .keys()
            .encrypt(EncryptRequest.newBuilder().setKeyId(keyId).setPlaintext(plaintext).build());
    assertEquals(1, sealed.getKeyVersion());
    client.keys().rotateKey(RotateKeyRequest.newBuilder().setKeyId(keyId).build());
    DecryptRequest decrypt =
        DecryptRequest.newBuilder().setKeyId(keyId).setCiphertext(sealed.getCiphertext()).build();

    Key disabled =
        client
            .keys()
            .disableKeyVersion(
                DisableKeyVersionRequest.newBuilder()
                    .setKeyId(keyId)
                    .setVersion(1)
                    .setReason("suspected leak")
                    .setUserId(USER)
                    .build());
    assertEquals(KeyVersionState.KEY_VERSION_STATE_DISABLED, stateOf(disabled, 1));
    assertEquals(KeyVersionState.KEY_VERSION_STATE_ENABLED, stateOf(disabled, 2));
    StatusRuntimeException error =
        assertThrows(StatusRuntimeException.class, () -> client.keys().decrypt(decrypt));
    ErrorDetails details = ErrorDetails.of(error);
    assertEquals(Status.Code.FAILED_PRECONDITION, details.code(), details::toString);
    assertEquals("VERSION_DISABLED", details.reason());
    assertEquals("1", details.metadata().get("version"));

    Key enabled =
        client
            .keys()
            .enableKeyVersion(
                EnableKeyVersionRequest.newBuilder()
                    .setKeyId(keyId)
                    .setVersion(1)
                    .setReason("false alarm")
                    .setUserId(USER)
                    .build());
    assertEquals(KeyVersionState.KEY_VERSION_STATE_ENABLED, stateOf(enabled, 1));
    DecryptResponse opened = client.keys().decrypt(decrypt);
    assertArrayEquals(plaintext.toByteArray(), opened.getPlaintext().toByteArray());
    assertEquals(1, opened.getKeyVersion());
  }

  private static KeyVersionState stateOf(Key key, int version) {
    return key.getVersionsList().stream()
        .filter(v -> v.getVersion() == version)
        .map(KeyVersion::getState)
        .findFirst()
        .orElseThrow(() -> new AssertionError("no version " + version + " in " + key));
  }

  @Test
  void aWorkflowHandleValidatesWithTheTokenItWasIssued() {
    GenerateHandleResponse issued =
        client
            .handles()
            .generateHandle(
                GenerateHandleRequest.newBuilder()
                    .setType("workflow")
                    .putAllContext(
                        Map.of(
                            "workflow", "data-processing",
                            "session", "session123",
                            "environment", "production"))
                    .setUserId(USER)
                    .build());
    assertEquals("workflow", issued.getHandle().getType());
    assertEquals(HandleStatus.HANDLE_STATUS_ACTIVE, issued.getHandle().getStatus());
    assertFalse(issued.getToken().isEmpty());

    Validation validation =
        client
            .handles()
            .validateHandle(
                ValidateHandleRequest.newBuilder()
                    .setToken(issued.getToken())
                    .putContext("ip", "192.168.1.100")
                    .putContext("user_agent", "MyApp/1.0")
                    .setUserId(USER)
                    .build())
            .getValidation();
    assertTrue(validation.getValid(), () -> "refused: " + validation.getReason());
    assertEquals(issued.getHandle().getId(), validation.getHandleId());
    assertEquals(issued.getHandle().getMaxUsage() - 1, validation.getRemainingUses());
  }

  @Test
  void anUnknownKeyTypeIsInvalidArgumentNamingTheTypeField() {
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client
                    .keys()
                    .generateKey(
                        GenerateKeyRequest.newBuilder()
                            .setType("no-such-type")
                            .setUserId(USER)
                            .build()));

    ErrorDetails details = ErrorDetails.of(error);
    assertEquals(Status.Code.INVALID_ARGUMENT, details.code(), details::toString);
    assertEquals("INVALID_ARGUMENT", details.reason());
    assertEquals("keyturn.dev", details.domain());
    ErrorDetails.FieldViolation violation =
        details
            .violation("type")
            .orElseThrow(() -> new AssertionError("no violation names 'type': " + details));
    assertTrue(violation.description().contains("no-such-type"), violation.description());
  }

  @Test
  void aPerCallDeadlineEndsACallThatCannotMeetIt() {
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client
                    .keys()
                    .withDeadlineAfter(1, TimeUnit.NANOSECONDS)
                    .getKey(GetKeyRequest.newBuilder().setKeyId("key_aaaaaaaaaaaaaaaa").build()));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, error.getStatus().getCode());
  }

  @Test
  void anUnknownKeyIsNotFoundWithReasonKeyNotFound() {
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () -> client.keys().getKey(GetKeyRequest.newBuilder().setKeyId("key_aaaaaaaaaaaaaaaa").build()));

    ErrorDetails details = ErrorDetails.of(error);
    assertEquals(Status.Code.NOT_FOUND, details.code(), details::toString);
    assertEquals("KEY_NOT_FOUND", details.reason());
    assertTrue(details.fieldViolations().isEmpty());
  }

  @Test
  void allKeysWalksEveryPageAndYieldsEachKeyOnce() {
    java.util.Set<String> made = new java.util.HashSet<>();
    for (int i = 0; i < 5; i++) {
      made.add(
          client
              .keys()
              .generateKey(GenerateKeyRequest.newBuilder().setType("session").build())
              .getKey()
              .getId());
    }
    java.util.List<String> seen = new java.util.ArrayList<>();
    for (Key key :
        client.allKeys(ListKeysRequest.newBuilder().setType("session").setPageSize(2).build())) {
      seen.add(key.getId());
    }
    assertEquals(seen.size(), new java.util.HashSet<>(seen).size(), "a key listed twice");
    assertTrue(seen.containsAll(made), "every key made is listed");
  }
}
