package dev.keyturn.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import keyturn.v1.Events.EventKind;
import keyturn.v1.Events.ExpiryEvent;
import keyturn.v1.Events.WatchExpiringRequest;
import keyturn.v1.Keys.GenerateKeyRequest;
import keyturn.v1.Keys.RotateKeyRequest;
import org.junit.jupiter.api.Test;

/**
 * {@link ExpiryWatch} against the live server (see {@link LiveServer}): it starts with the
 * snapshot, sees new events in order, resumes from a saved sequence without repeating one, ends
 * on a resume point the server refuses, and ends quietly when closed or when its client closes.
 * The reconnect policy itself is run from the shared table in {@link PolicyTableTest}.
 */
class ExpiryWatchTest {
  private static final WatchExpiringRequest ENCRYPTION_KEYS =
      WatchExpiringRequest.newBuilder().addTypes("encryption").build();

  /** Reads from {@code watch} until an event satisfies {@code done}, within 30 s. */
  private static List<ExpiryEvent> readUntil(
      ExpiryWatch watch, java.util.function.Predicate<List<ExpiryEvent>> done) throws Exception {
    List<ExpiryEvent> seen = new ArrayList<>();
    CompletableFuture.runAsync(
            () -> {
              while (!done.test(seen) && watch.hasNext()) {
                seen.add(watch.next());
              }
            })
        .get(30, TimeUnit.SECONDS);
    return seen;
  }

  private static boolean completed(List<ExpiryEvent> events) {
    return events.stream().anyMatch(e -> e.getKind() == EventKind.EVENT_KIND_SNAPSHOT_COMPLETE);
  }

  @Test
  void aWatchSeesNewEventsInOrderAndResumesWithoutRepeatingOne() throws Exception {
    try (KeyturnClient client = LiveServer.client();
        ExpiryWatch watch = client.watchKeys(ENCRYPTION_KEYS)) {
      readUntil(watch, ExpiryWatchTest::completed);
      long start = watch.lastSequence().orElseThrow();

      String keyId =
          client
              .keys()
              .generateKey(GenerateKeyRequest.newBuilder().setType("encryption").build())
              .getKey()
              .getId();
      client.keys().rotateKey(RotateKeyRequest.newBuilder().setKeyId(keyId).build());
      List<ExpiryEvent> mine =
          readUntil(watch, seen -> seen.stream().filter(e -> e.getKey().getId().equals(keyId)).count() == 2)
              .stream()
              .filter(e -> e.getKey().getId().equals(keyId))
              .toList();
      assertEquals(
          List.of(EventKind.EVENT_KIND_CREATED, EventKind.EVENT_KIND_ROTATED),
          mine.stream().map(ExpiryEvent::getKind).toList());
      assertTrue(mine.get(0).getSequence() > start);
      assertEquals(mine.get(0).getSequence() + 1, mine.get(1).getSequence());

      // A second watch from the saved point replays exactly those events, no snapshot.
      WatchExpiringRequest resumed =
          ENCRYPTION_KEYS.toBuilder().addIds(keyId).setResumeAfter(start).build();
      try (ExpiryWatch replay = client.watchKeys(resumed)) {
        List<ExpiryEvent> replayed = readUntil(replay, seen -> seen.size() == 2);
        assertEquals(mine, replayed);
        assertEquals(mine.get(1).getSequence(), replay.lastSequence().orElseThrow());
      }
    }
  }

  @Test
  void aResumePointTheServerRefusesEndsTheWatchWithoutAReconnect() {
    try (KeyturnClient client = LiveServer.client();
        ExpiryWatch watch =
            client.watchKeys(WatchExpiringRequest.newBuilder().setResumeAfter(1L << 60).build())) {
      StatusRuntimeException error = assertThrows(StatusRuntimeException.class, watch::hasNext);
      assertEquals(Status.Code.OUT_OF_RANGE, error.getStatus().getCode());
      assertEquals(0, watch.reconnects());
    }
  }

  @Test
  void closingTheWatchOrItsClientEndsItQuietly() throws Exception {
    try (KeyturnClient client = LiveServer.client()) {
      ExpiryWatch watch = client.watchKeys(ENCRYPTION_KEYS);
      readUntil(watch, ExpiryWatchTest::completed);
      CompletableFuture<Boolean> blocked = CompletableFuture.supplyAsync(watch::hasNext);
      Thread.sleep(200); // let it block on the stream
      watch.close();
      assertFalse(blocked.get(10, TimeUnit.SECONDS), "a closed watch has no next event");
      assertEquals(0, watch.reconnects());
    }

    KeyturnClient client = LiveServer.client();
    ExpiryWatch watch = client.watchHandles(WatchExpiringRequest.getDefaultInstance());
    readUntil(watch, ExpiryWatchTest::completed);
    CompletableFuture<Boolean> blocked = CompletableFuture.supplyAsync(watch::hasNext);
    Thread.sleep(200);
    client.close();
    assertFalse(blocked.get(10, TimeUnit.SECONDS), "a watch of a closed client has no next event");
    assertEquals(0, watch.reconnects());
  }

  @Test
  void closingTheClientEndsAWatchWaitingToReconnectAtOnce() throws Exception {
    int port;
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      port = socket.getLocalPort(); // closed again: nothing listens there
    }
    CountDownLatch waiting = new CountDownLatch(1);
    Backoff hours = new Backoff(Duration.ofHours(1000), 2, Duration.ofHours(1000));
    WatchOptions options =
        WatchOptions.defaults()
            .withBackoff(hours)
            .withReconnectListener((failure, wait) -> waiting.countDown());
    KeyturnClient client = KeyturnClient.builder("127.0.0.1:" + port).build();
    ExpiryWatch watch = client.watchKeys(ENCRYPTION_KEYS, options);
    CompletableFuture<Boolean> blocked = CompletableFuture.supplyAsync(watch::hasNext);
    assertTrue(waiting.await(10, TimeUnit.SECONDS), "the watch never tried to reconnect");
    client.close();
    assertFalse(
        blocked.get(5, TimeUnit.SECONDS), "a watch waiting to reconnect ends with its client");
  }
}
