package dev.keyturn.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Pages are walked lazily with the tokens hidden, and a repeated token ends the walk. */
class PagesTest {
  /** A list served from a map of page token to page, recording the tokens asked for. */
  private static final class Server {
    final Map<String, Pages.Page<String>> pages;
    final List<String> asked = new ArrayList<>();

    Server(Map<String, Pages.Page<String>> pages) {
      this.pages = pages;
    }

    Pages.Page<String> fetch(String token) {
      asked.add(token);
      if (asked.size() > 100) {
        throw new AssertionError("100 pages fetched: the walk loops");
      }
      return pages.get(token);
    }
  }

  private static Pages.Page<String> page(String next, String... items) {
    return new Pages.Page<>(List.of(items), next);
  }

  @Test
  void everyItemOfEveryPageOnceFetchedOnlyWhenNeeded() {
    Server server =
        new Server(Map.of("", page("t1", "a", "b"), "t1", page("t2", "c"), "t2", page("", "d")));
    Iterator<String> walk = Pages.walk("", server::fetch).iterator();
    assertEquals("a", walk.next());
    assertEquals("b", walk.next());
    assertEquals(List.of(""), server.asked, "the second page is not needed yet");
    List<String> rest = new ArrayList<>();
    walk.forEachRemaining(rest::add);
    assertEquals(List.of("c", "d"), rest);
    assertEquals(List.of("", "t1", "t2"), server.asked);
  }

  @Test
  void emptyPagesInTheMiddleAreWalkedPast() {
    Server server =
        new Server(Map.of("", page("t1"), "t1", page("t2"), "t2", page("", "only")));
    List<String> items = new ArrayList<>();
    Pages.walk("", server::fetch).forEach(items::add);
    assertEquals(List.of("only"), items);
  }

  @ParameterizedTest(name = "{0}")
  @CsvSource({"the same token again, 2", "a cycle of two tokens, 3"})
  void aRepeatedPageTokenEndsTheWalkWithAnErrorInsteadOfLooping(String name, int pagesGiven) {
    // "" -> t1 -> t1 again, or "" -> t1 -> t2 -> t1 again
    Server server =
        new Server(
            Map.of(
                "",
                page("t1", "a"),
                "t1",
                page(pagesGiven == 2 ? "t1" : "t2", "b"),
                "t2",
                page("t1", "c")));
    List<String> items = new ArrayList<>();
    StatusRuntimeException failed =
        assertThrows(
            StatusRuntimeException.class,
            () -> Pages.walk("", server::fetch).forEach(items::add));
    assertEquals(Status.Code.INTERNAL, failed.getStatus().getCode());
    assertEquals("PAGE_TOKEN_REPEATED", ErrorDetails.of(failed).reason());
    assertEquals(List.of("a", "b", "c").subList(0, pagesGiven), items, "each page once");
    assertEquals(pagesGiven, server.asked.size());
    assertFalse(failed.getMessage().contains("t1"), failed.getMessage());
  }
}
