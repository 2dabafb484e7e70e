package dev.keyturn.client;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The live server the test scripts start: KEYTURN_ADDRESS (host:port) and KEYTURN_TOKEN (an
 * admin token), as clients/java/run-tests.sh passes them. Tests that need it are skipped, with
 * this message, when they are unset.
 */
final class LiveServer {
  static final String UNSET = "set KEYTURN_ADDRESS and KEYTURN_TOKEN to a live server";

  private LiveServer() {}

  static boolean configured() {
    return isSet("KEYTURN_ADDRESS") && isSet("KEYTURN_TOKEN");
  }

  /** A client of the live server with the admin token; skips the test without one. */
  static KeyturnClient client() {
    assumeTrue(configured(), UNSET);
    return KeyturnClient.builder(System.getenv("KEYTURN_ADDRESS"))
        .token(System.getenv("KEYTURN_TOKEN"))
        .build();
  }

  private static boolean isSet(String name) {
    String value = System.getenv(name);
    return value != null && !value.isBlank();
  }
}
