package dev.keyturn.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.grpc.MethodDescriptor;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.UUID;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.BiConsumer;
import java.util.stream.IntStream;
import java.util.stream.Stream;
import keyturn.v1.Admin;
import keyturn.v1.Events.EventKind;
import keyturn.v1.Events.ExpiryEvent;
import keyturn.v1.Events.WatchExpiringRequest;
import keyturn.v1.Handles;
import keyturn.v1.Keys;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;

/**
 * The shared client-policy table (clients/policy/cases.json), run against the scripted server
 * every client's tests use (clients/policy/scripted_server.py): which calls are retried and
 * how often, how long the client waits (RetryInfo), the one deadline of a call, how watches
 * reconnect and resume, and the numbers every client must share.
 */
class PolicyTableTest {
  private static final JsonObject TABLE = load();
  private static final JsonObject POLICY = TABLE.getAsJsonObject("policy");
  private static final Backoff TEST_BACKOFF = backoff(TABLE.getAsJsonObject("test_backoff"));
  private static final String NO_SERVER =
      "KEYTURN_POLICY_* are not set: start clients/policy/scripted_server.py (run-tests.sh does)";

  /** One call per method the table scripts; the scripted server ignores the requests. */
  private static final Map<String, BiConsumer<KeyturnClient, Long>> CALLS =
      Map.of(
          "keyturn.v1.KeyService/GetKey",
          (c, ms) -> keys(c, ms).getKey(Keys.GetKeyRequest.newBuilder().setKeyId("key_x").build()),
          "keyturn.v1.KeyService/Encrypt",
          (c, ms) -> keys(c, ms).encrypt(Keys.EncryptRequest.newBuilder().setKeyId("key_x").build()),
          "keyturn.v1.KeyService/Decrypt",
          (c, ms) -> keys(c, ms).decrypt(Keys.DecryptRequest.newBuilder().setKeyId("key_x").build()),
          "keyturn.v1.KeyService/Sign",
          (c, ms) -> keys(c, ms).sign(Keys.SignRequest.newBuilder().setKeyId("key_x").build()),
          "keyturn.v1.KeyService/ComputeMac",
          (c, ms) ->
              keys(c, ms).computeMac(Keys.ComputeMacRequest.newBuilder().setKeyId("key_x").build()),
          "keyturn.v1.KeyService/GenerateKey",
          (c, ms) ->
              keys(c, ms)
                  .generateKey(Keys.GenerateKeyRequest.newBuilder().setType("encryption").build()),
          "keyturn.v1.HandleService/ValidateHandle",
          (c, ms) ->
              handles(c, ms)
                  .validateHandle(
                      Handles.ValidateHandleRequest.newBuilder().setToken("kt_x").build()),
          "keyturn.v1.HandleService/RotateHandle",
          (c, ms) ->
              handles(c, ms)
                  .rotateHandle(
                      Handles.RotateHandleRequest.newBuilder().setHandleId("hdl_x").build()),
          "keyturn.v1.AdminService/UpdateConfig",
          (c, ms) -> {
            var admin = ms == null ? c.admin() : c.admin().withDeadlineAfter(ms, TimeUnit.MILLISECONDS);
            admin.updateConfig(Admin.UpdateConfigRequest.getDefaultInstance());
          });

  private static keyturn.v1.KeyServiceGrpc.KeyServiceBlockingStub keys(KeyturnClient c, Long ms) {
    return ms == null ? c.keys() : c.keys().withDeadlineAfter(ms, TimeUnit.MILLISECONDS);
  }

  private static keyturn.v1.HandleServiceGrpc.HandleServiceBlockingStub handles(
      KeyturnClient c, Long ms) {
    return ms == null ? c.handles() : c.handles().withDeadlineAfter(ms, TimeUnit.MILLISECONDS);
  }

  private static JsonObject load() {
    String configured = System.getenv("KEYTURN_POLICY_CASES");
    Path path = configured != null ? Path.of(configured) : Path.of("..", "policy", "cases.json");
    try {
      return JsonParser.parseString(Files.readString(path)).getAsJsonObject();
    } catch (IOException e) {
      throw new IllegalStateException("cannot read the policy table " + path, e);
    }
  }

  private static Backoff backoff(JsonObject row) {
    return new Backoff(
        Duration.ofMillis(row.get("initial_ms").getAsLong()),
        row.get("multiplier").getAsDouble(),
        Duration.ofMillis(row.get("max_ms").getAsLong()));
  }

  private static String env(String name) {
    return System.getenv("KEYTURN_POLICY_" + name);
  }

  private static List<JsonObject> cases(String kind) {
    List<JsonObject> found = new ArrayList<>();
    TABLE.getAsJsonArray(kind).forEach(c -> found.add(c.getAsJsonObject()));
    return found;
  }

  private static JsonObject runOf(String token) throws IOException, InterruptedException {
    HttpResponse<String> answer =
        HttpClient.newHttpClient()
            .send(
                HttpRequest.newBuilder(URI.create(env("CONTROL") + "/runs/" + token)).build(),
                HttpResponse.BodyHandlers.ofString());
    assertEquals(200, answer.statusCode(), "no run " + token + " on the scripted server");
    return JsonParser.parseString(answer.body()).getAsJsonObject();
  }

  /** What the server saw against the case's expectations. */
  private static void checkRun(JsonObject expect, JsonObject run) {
    JsonArray waits = run.getAsJsonArray("waits_ms");
    if (expect.has("min_waits_ms")) {
      JsonArray least = expect.getAsJsonArray("min_waits_ms");
      for (int i = 0; i < least.size(); i++) {
        assertTrue(
            i < waits.size() && waits.get(i).getAsDouble() >= least.get(i).getAsDouble(),
            "waits " + waits + ": wait " + i + " should be >= " + least.get(i) + " ms");
      }
    }
    if (expect.has("max_deadline_drift_ms")) {
      JsonElement drift = run.get("deadline_drift_ms");
      assertFalse(drift.isJsonNull(), "an attempt carried no deadline");
      assertTrue(
          drift.getAsDouble() <= expect.get("max_deadline_drift_ms").getAsDouble(),
          "deadline drift " + drift + " ms: one deadline for all attempts");
    }
    if (expect.has("granted_ms")) {
      JsonElement granted = run.getAsJsonArray("granted_ms").get(0);
      JsonArray range = expect.getAsJsonArray("granted_ms");
      assertTrue(
          !granted.isJsonNull()
              && granted.getAsDouble() >= range.get(0).getAsDouble()
              && granted.getAsDouble() <= range.get(1).getAsDouble(),
          "the server saw a deadline of " + granted + " ms, want " + range);
    }
    if (expect.has("no_deadline")) {
      run.getAsJsonArray("granted_ms")
          .forEach(g -> assertTrue(g.isJsonNull(), "a watch stream carried a deadline: " + g));
    }
    if (expect.has("tls")) {
      run.getAsJsonArray("tls").forEach(t -> assertTrue(t.getAsBoolean(), "an attempt without TLS"));
    }
  }

  /** An event in the table's notation: "snapshot", "complete@10", "heartbeat@20", "11". */
  private static String describe(ExpiryEvent event) {
    if (event.getSnapshot()) {
      return "snapshot";
    }
    if (event.getKind() == EventKind.EVENT_KIND_SNAPSHOT_COMPLETE) {
      return "complete@" + event.getLatestSequence();
    }
    if (event.getKind() == EventKind.EVENT_KIND_HEARTBEAT) {
      return "heartbeat@" + event.getLatestSequence();
    }
    return Long.toString(event.getSequence());
  }

  @Test
  void theClientDefaultsAreThePolicyNumbers() {
    assertEquals(backoff(POLICY.getAsJsonObject("call_backoff")), RetryPolicy.DEFAULT.backoff());
    assertEquals(backoff(POLICY.getAsJsonObject("watch_backoff")), Backoff.WATCH);
    assertEquals(POLICY.get("max_attempts").isJsonNull(), RetryPolicy.DEFAULT.maxAttempts() == 0);
    assertEquals(
        Duration.ofMillis(POLICY.get("default_timeout_ms").getAsLong()),
        KeyturnClient.DEFAULT_TIMEOUT);
    assertEquals(Backoff.WATCH, WatchOptions.defaults().backoff());
    JsonObject keepalive = POLICY.getAsJsonObject("keepalive"); // what build() sets
    assertEquals(
        Duration.ofMillis(keepalive.get("time_ms").getAsLong()), KeyturnClient.KEEPALIVE_TIME);
    assertEquals(
        Duration.ofMillis(keepalive.get("timeout_ms").getAsLong()),
        KeyturnClient.KEEPALIVE_TIMEOUT);
    JsonObject silence = POLICY.getAsJsonObject("watch_silence");
    assertEquals(
        new Silence(
            silence.get("heartbeats").getAsDouble(),
            Duration.ofMillis(silence.get("floor_ms").getAsLong())),
        Silence.WATCH);
    assertEquals(Silence.WATCH, WatchOptions.defaults().silence());
  }

  @Test
  void aStreamIsGivenUpAfterThreeHeartbeatsOfSilenceAndNeverSoonerThanFiveSeconds() {
    assertEquals(Optional.empty(), Silence.WATCH.limit(Optional.empty())); // not said: none
    long[][] intervalAndLimitMs = {{100, 5_000}, {1_000, 5_000}, {2_000, 6_000}, {30_000, 90_000}};
    for (long[] row : intervalAndLimitMs) {
      assertEquals(
          Optional.of(Duration.ofMillis(row[1])),
          Silence.WATCH.limit(Optional.of(Duration.ofMillis(row[0]))),
          row[0] + " ms heartbeats");
    }
  }

  @Test
  void everyRpcIsRetriedAsItsIdempotencyLevelSays() {
    Map<String, String> levels = new TreeMap<>();
    List<io.grpc.ServiceDescriptor> services =
        List.of(
            keyturn.v1.KeyServiceGrpc.getServiceDescriptor(),
            keyturn.v1.HandleServiceGrpc.getServiceDescriptor(),
            keyturn.v1.AdminServiceGrpc.getServiceDescriptor());
    JsonObject expected = TABLE.getAsJsonObject("methods");
    for (io.grpc.ServiceDescriptor service : services) {
      for (MethodDescriptor<?, ?> method : service.getMethods()) {
        String level = CallPolicy.level(method).name();
        levels.put(method.getFullMethodName(), level);
        assertEquals(
            !level.equals("IDEMPOTENCY_UNKNOWN"),
            CallPolicy.retryable(method),
            method.getFullMethodName());
      }
    }
    Map<String, String> table = new TreeMap<>();
    expected.entrySet().forEach(e -> table.put(e.getKey(), e.getValue().getAsString()));
    assertEquals(table, levels);
  }

  @Test
  void theCodesThatEndAWatchAreThePolicyOnes() {
    Set<String> ends = new TreeSet<>();
    CallPolicy.WATCH_ENDS_ON.forEach(code -> ends.add(code.name()));
    Set<String> table = new TreeSet<>();
    POLICY.getAsJsonArray("watch_ends_on").forEach(c -> table.add(c.getAsString()));
    assertEquals(table, ends);
  }

  @Test
  void backoffVectors() {
    for (JsonElement element : TABLE.getAsJsonArray("backoff")) {
      JsonObject v = element.getAsJsonObject();
      Backoff backoff = v.get("policy").getAsString().equals("call") ? Backoff.CALLS : Backoff.WATCH;
      Duration wait = backoff.delay(v.get("retry").getAsInt(), v.get("random").getAsDouble());
      if (v.has("retry_info_ms")) {
        Duration floor = Duration.ofMillis(v.get("retry_info_ms").getAsLong());
        wait = wait.compareTo(floor) >= 0 ? wait : floor;
      }
      assertEquals(v.get("delay_ms").getAsDouble(), wait.toNanos() / 1e6, 0.001, v.toString());
    }
  }

  @Test
  void loopbackVectors() {
    for (JsonElement element : TABLE.getAsJsonArray("loopback")) {
      JsonObject v = element.getAsJsonObject();
      String address = v.get("address").getAsString();
      assertEquals(v.get("loopback").getAsBoolean(), CallPolicy.isLoopback(address), address);
      // TLS unless loopback, by default.
      assertEquals(!v.get("loopback").getAsBoolean(), KeyturnClient.builder(address).usesTls(), address);
    }
  }

  @Test
  void aServerNameAsksForTlsAsAPrivateCaDoes() {
    // A name to check the certificate against means TLS, also to a loopback address (as in
    // the Python, Go and Node clients); plaintext() afterwards still wins.
    assertTrue(KeyturnClient.builder("127.0.0.1:50051").serverName("keyturn.internal").usesTls());
    assertTrue(
        KeyturnClient.builder("localhost:50051").trustedCertificates(Path.of("ca.pem")).usesTls());
    assertFalse(
        KeyturnClient.builder("127.0.0.1:50051").serverName("keyturn.internal").plaintext().usesTls());
  }

  @TestFactory
  Stream<DynamicTest> calls() {
    List<JsonObject> calls = cases("calls");
    return IntStream.range(0, calls.size())
        .mapToObj(i -> DynamicTest.dynamicTest(calls.get(i).get("name").getAsString(), () -> call(i, calls.get(i))));
  }

  private void call(int index, JsonObject tc) throws Exception {
    assumeTrue(env("ADDRESS") != null, NO_SERVER);
    String token = "call-" + index + "~java-" + UUID.randomUUID();
    JsonObject expect = tc.getAsJsonObject("expect");
    int maxAttempts = tc.has("max_attempts") ? tc.get("max_attempts").getAsInt() : 0;
    boolean tls = tc.has("transport") && tc.get("transport").getAsString().equals("tls");
    KeyturnClient.Builder builder =
        KeyturnClient.builder(env(tls ? "TLS_ADDRESS" : "ADDRESS"))
            .token(token)
            .retryPolicy(new RetryPolicy(TEST_BACKOFF, maxAttempts));
    if (tls) {
      builder.trustedCertificates(Path.of(env("CA"))).serverName("keyturn.test");
    }
    Long timeout = tc.get("timeout_ms").isJsonNull() ? null : tc.get("timeout_ms").getAsLong();
    String outcome = "OK";
    long started = System.nanoTime();
    try (KeyturnClient client = builder.build()) {
      BiConsumer<KeyturnClient, Long> call = CALLS.get(tc.get("method").getAsString());
      assertNotNull(call, "no call for " + tc.get("method"));
      call.accept(client, timeout);
    } catch (StatusRuntimeException e) {
      outcome = e.getStatus().getCode().name();
    }
    double elapsedMs = (System.nanoTime() - started) / 1e6;

    JsonObject run = runOf(token);
    assertEquals(expect.get("code").getAsString(), outcome, "outcome; the server saw " + run);
    int attempts = run.get("attempts").getAsInt();
    if (expect.has("attempts")) {
      assertEquals(expect.get("attempts").getAsInt(), attempts, "attempts");
    }
    if (expect.has("min_attempts")) {
      assertTrue(attempts >= expect.get("min_attempts").getAsInt(), attempts + " attempts");
    }
    run.getAsJsonArray("methods")
        .forEach(m -> assertEquals(tc.get("method").getAsString(), m.getAsString()));
    if (expect.has("max_elapsed_ms")) {
      assertTrue(elapsedMs <= expect.get("max_elapsed_ms").getAsDouble(), "took " + elapsedMs + " ms");
    }
    checkRun(expect, run);
  }

  @TestFactory
  Stream<DynamicTest> watches() {
    List<JsonObject> watches = cases("watches");
    return IntStream.range(0, watches.size())
        .mapToObj(i -> DynamicTest.dynamicTest(watches.get(i).get("name").getAsString(), () -> watch(i, watches.get(i))));
  }

  private void watch(int index, JsonObject tc) throws Exception {
    assumeTrue(env("ADDRESS") != null, NO_SERVER);
    String token = "watch-" + index + "~java-" + UUID.randomUUID();
    JsonObject expect = tc.getAsJsonObject("expect");
    WatchExpiringRequest.Builder request = WatchExpiringRequest.newBuilder();
    if (!tc.get("resume_after").isJsonNull()) {
      request.setResumeAfter(tc.get("resume_after").getAsLong());
    }
    List<String> delivered = new ArrayList<>();
    String outcome = "ended without an error";
    ScheduledExecutorService guard = Executors.newSingleThreadScheduledExecutor();
    try (KeyturnClient client = KeyturnClient.builder(env("ADDRESS")).token(token).build();
        ExpiryWatch watch =
            tc.get("subject").getAsString().equals("handles")
                ? client.watchHandles(request.build(), WatchOptions.defaults().withBackoff(TEST_BACKOFF))
                : client.watchKeys(request.build(), WatchOptions.defaults().withBackoff(TEST_BACKOFF))) {
      guard.schedule(watch::close, 20, TimeUnit.SECONDS); // a cancel, not a deadline
      while (watch.hasNext()) {
        delivered.add(describe(watch.next()));
      }
    } catch (StatusRuntimeException e) {
      outcome = e.getStatus().getCode().name();
    } finally {
      guard.shutdownNow();
    }

    JsonObject run = runOf(token);
    List<String> want = new ArrayList<>();
    expect.getAsJsonArray("delivered").forEach(e -> want.add(e.getAsString()));
    assertEquals(want, delivered, "delivered events");
    assertEquals(expect.get("code").getAsString(), outcome, "how the watch ended");
    assertEquals(expect.getAsJsonArray("resume_after"), run.getAsJsonArray("resume_after"));
    checkRun(expect, run);
  }
}
