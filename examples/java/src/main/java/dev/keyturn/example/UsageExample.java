package dev.keyturn.example;

import dev.keyturn.client.ErrorDetails;
import dev.keyturn.client.KeyturnClient;
import io.grpc.StatusRuntimeException;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Collectors;
import keyturn.v1.Admin.GetHealthRequest;
import keyturn.v1.Admin.Health;
import keyturn.v1.Handles.GenerateHandleRequest;
import keyturn.v1.Handles.GenerateHandleResponse;
import keyturn.v1.Handles.GetHandleStatisticsRequest;
import keyturn.v1.Handles.ValidateHandleRequest;
import keyturn.v1.Handles.Validation;
import keyturn.v1.Keys.GenerateKeyRequest;
import keyturn.v1.Keys.GetKeyStatisticsRequest;
import keyturn.v1.Resources.Key;
import keyturn.v1.Statistics.HandleStatistics;
import keyturn.v1.Statistics.KeyStatistics;

/**
 * The specification's "Usage Examples" over gRPC: generate an encryption key, generate a
 * workflow handle with context, validate it with ip and user agent, then read health and
 * key and handle statistics. Connects to KEYTURN_ADDRESS with KEYTURN_TOKEN; exits 1 on any
 * failure.
 */
public final class UsageExample {
  private UsageExample() {}

  /** The specification's KeyManager: one method per call of its example. */
  static final class KeyManager {
    private final KeyturnClient client;

    KeyManager(KeyturnClient client) {
      this.client = client;
    }

    Key generateEncryptionKey(String userId) {
      return client
          .keys()
          .generateKey(
              GenerateKeyRequest.newBuilder()
                  .setType("encryption")
                  .putMetadata("purpose", "data-encryption")
                  .putMetadata("environment", "production")
                  .setUserId(userId)
                  .build())
          .getKey();
    }

    /** Returns the handle and its secret token, which is shown only this once. */
    GenerateHandleResponse generateWorkflowHandle(String userId, Map<String, String> context) {
      return client
          .handles()
          .generateHandle(
              GenerateHandleRequest.newBuilder()
                  .setType("workflow")
                  .putAllContext(context)
                  .putContext("environment", "production")
                  .setUserId(userId)
                  .build());
    }

    /** Keyturn validates the secret token, not the public handle id. */
    Validation validateHandle(String token, String userId, String ip, String userAgent) {
      return client
          .handles()
          .validateHandle(
              ValidateHandleRequest.newBuilder()
                  .setToken(token)
                  .putContext("ip", ip)
                  .putContext("user_agent", userAgent)
                  .setUserId(userId)
                  .build())
          .getValidation();
    }

    Health getHealth() {
      return client.admin().getHealth(GetHealthRequest.getDefaultInstance()).getHealth();
    }

    KeyStatistics getKeyStatistics() {
      return client
          .keys()
          .getKeyStatistics(GetKeyStatisticsRequest.getDefaultInstance())
          .getStatistics();
    }

    HandleStatistics getHandleStatistics() {
      return client
          .handles()
          .getHandleStatistics(GetHandleStatisticsRequest.getDefaultInstance())
          .getStatistics();
    }
  }

  public static void main(String[] args) {
    int status;
    try (KeyturnClient client = connect()) {
      status = example(new KeyManager(client));
    } catch (StatusRuntimeException e) {
      ErrorDetails details = ErrorDetails.of(e);
      String reason = details.reason().isEmpty() ? "" : " (" + details.reason() + ")";
      System.err.printf("Error: %s%s: %s%n", details.code(), reason, details.message());
      details
          .fieldViolations()
          .forEach(v -> System.err.printf("  %s: %s%n", v.field(), v.description()));
      status = 1;
    }
    if (status != 0) {
      System.exit(status);
    }
  }

  /** KEYTURN_ADDRESS (default 127.0.0.1:50051) with the token in KEYTURN_TOKEN. */
  private static KeyturnClient connect() {
    String address = System.getenv().getOrDefault("KEYTURN_ADDRESS", "127.0.0.1:50051");
    String token = System.getenv("KEYTURN_TOKEN");
    if (token == null || token.isBlank()) {
      System.err.println("Error: set KEYTURN_TOKEN (and KEYTURN_ADDRESS, default 127.0.0.1:50051)");
      System.exit(2);
    }
    return KeyturnClient.builder(address).token(token).build();
  }

  private static int example(KeyManager keyManager) {
    Key key = keyManager.generateEncryptionKey("user123");
    System.out.println("Generated key: " + key.getId());

    GenerateHandleResponse handle =
        keyManager.generateWorkflowHandle(
            "user123", Map.of("workflow", "data-processing", "session", "session123"));
    System.out.println("Generated handle: " + handle.getHandle().getId());

    Validation validation =
        keyManager.validateHandle(handle.getToken(), "user123", "192.168.1.100", "MyApp/1.0");
    System.out.println("Handle valid: " + validation.getValid());

    Health health = keyManager.getHealth();
    String components =
        health.getComponentsList().stream()
            .map(c -> c.getName() + "=" + c.getStatus())
            .collect(Collectors.joining(", "));
    System.out.printf("System health: %s (%s)%n", health.getStatus(), components);

    KeyStatistics keys = keyManager.getKeyStatistics();
    System.out.printf(
        "Key statistics: total=%d by_status=%s generated_last_hour=%d operations=%s%n",
        keys.getTotal(),
        new TreeMap<>(keys.getByStatusMap()),
        keys.getGenerated().getLastHour(),
        new TreeMap<>(keys.getOperationsMap()));
    HandleStatistics handles = keyManager.getHandleStatistics();
    System.out.printf(
        "Handle statistics: total=%d by_status=%s validations=%d succeeded=%d%n",
        handles.getTotal(),
        new TreeMap<>(handles.getByStatusMap()),
        handles.getValidations(),
        handles.getValidationsSucceeded());

    // The example is also a check in CI: a fresh handle must validate.
    if (!validation.getValid()) {
      System.err.println("Error: the new handle did not validate: " + validation.getReason());
      return 1;
    }
    return 0;
  }
}
