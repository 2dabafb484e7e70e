package dev.keyturn.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import keyturn.v1.Keys.GenerateKeyRequest;
import keyturn.v1.Keys.GetKeyRequest;
import org.junit.jupiter.api.Test;

/**
 * Closing a {@link KeyturnClient} ends the calls still running with CANCELLED, at once: a call
 * waiting on a server that never answers, and a read waiting to be retried (its attempts are
 * scheduled on the client's executor, which close() stops). Neither waits out its deadline, nor
 * blocks for ever.
 */
class ClientCloseTest {
  private static final GetKeyRequest GET_KEY =
      GetKeyRequest.newBuilder().setKeyId("key_aaaaaaaaaaaaaaaa").build();

  /** The outcome of {@code client.keys().getKey} run on another thread. */
  private static CompletableFuture<Throwable> getKeyInBackground(KeyturnClient client) {
    return CompletableFuture.supplyAsync(
        () -> {
          try {
            client.keys().getKey(GET_KEY);
            return null;
          } catch (RuntimeException e) {
            return e;
          }
        });
  }

  private static void assertCancelledSoon(CompletableFuture<Throwable> call) throws Exception {
    Throwable outcome = call.get(5, TimeUnit.SECONDS); // a TimeoutException fails the test
    StatusRuntimeException error = assertInstanceOf(StatusRuntimeException.class, outcome);
    assertEquals(Status.Code.CANCELLED, error.getStatus().getCode(), error.toString());
  }

  @Test
  void aCallWaitingOnAServerThatDoesNotAnswerEndsWhenTheClientCloses() throws Exception {
    try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
      List<Socket> held = new ArrayList<>();
      Thread acceptor =
          new Thread(
              () -> {
                try {
                  while (true) {
                    held.add(silent.accept()); // accepted, never answered
                  }
                } catch (IOException closed) {
                  // the test is over
                }
              });
      acceptor.setDaemon(true);
      acceptor.start();
      KeyturnClient client =
          KeyturnClient.builder("127.0.0.1:" + silent.getLocalPort()).token("kt_unused").build();
      CompletableFuture<Throwable> call = getKeyInBackground(client);
      Thread.sleep(300);
      client.close();
      assertCancelledSoon(call);
    }
  }

  @Test
  void aCallThatIsNeverRetriedEndsWithCancelledTooAndSoDoLaterCalls() throws Exception {
    try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
      KeyturnClient client =
          KeyturnClient.builder("127.0.0.1:" + silent.getLocalPort()).token("kt_unused").build();
      GenerateKeyRequest generate = GenerateKeyRequest.newBuilder().setType("encryption").build();
      CompletableFuture<Throwable> call =
          CompletableFuture.supplyAsync(
              () -> {
                try {
                  client.keys().generateKey(generate);
                  return null;
                } catch (RuntimeException e) {
                  return e;
                }
              });
      Thread.sleep(300);
      client.close();
      assertCancelledSoon(call);
      StatusRuntimeException later =
          assertThrows(StatusRuntimeException.class, () -> client.keys().generateKey(generate));
      assertEquals(Status.Code.CANCELLED, later.getStatus().getCode(), later.toString());
    }
  }

  @Test
  void aReadWaitingToBeRetriedEndsWhenTheClientCloses() throws Exception {
    int port;
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      port = socket.getLocalPort(); // closed again: every attempt is UNAVAILABLE
    }
    RetryPolicy slow =
        new RetryPolicy(new Backoff(Duration.ofSeconds(20), 2, Duration.ofSeconds(20)), 0);
    KeyturnClient client =
        KeyturnClient.builder("127.0.0.1:" + port).token("kt_unused").retryPolicy(slow).build();
    CompletableFuture<Throwable> call = getKeyInBackground(client);
    Thread.sleep(500); // the first attempt failed: the retry waits
    client.close();
    assertCancelledSoon(call);
  }
}
