package dev.keyturn.client;

import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.Set;
import java.util.function.Function;

/**
 * Walks an AIP-158 paginated list: asks for the next page only when the caller has consumed
 * the current one, and hides page tokens.
 *
 * <p>A next page token already followed (a server or proxy replaying a page) would walk the
 * same pages for ever: it ends the walk with a {@link StatusRuntimeException} of code INTERNAL
 * and ErrorInfo reason {@code PAGE_TOKEN_REPEATED}, as gRPC reports a malformed answer, rather
 * than a quiet stop the caller would take for the complete list. The other clients do the same.
 */
final class Pages {
  /** One page as the list RPCs return it: items plus the token of the next page ("" last). */
  record Page<T>(List<T> items, String nextPageToken) {}

  private Pages() {}

  /** Every item of every page from {@code first} on, each page fetched with {@code fetch}. */
  static <T> Iterable<T> walk(String first, Function<String, Page<T>> fetch) {
    return () -> new Walk<>(first, fetch);
  }

  /** The error of a list whose server gave a page token again; the token stays out of it. */
  static StatusRuntimeException pageTokenRepeated(int pages) {
    ErrorInfo info = ErrorInfo.newBuilder().setReason("PAGE_TOKEN_REPEATED").build();
    return StatusProto.toStatusRuntimeException(
        com.google.rpc.Status.newBuilder()
            .setCode(Code.INTERNAL_VALUE)
            .setMessage(
                "the server returned an already followed next_page_token after "
                    + pages
                    + " page(s): the list cannot be walked further")
            .addDetails(Any.pack(info))
            .build());
  }

  private static final class Walk<T> implements Iterator<T> {
    private final Function<String, Page<T>> fetch;
    private final Set<String> followed = new HashSet<>();
    private Iterator<T> page = List.<T>of().iterator();
    /** The token of the page to fetch next; null once the last page was fetched. */
    private String next;

    Walk(String first, Function<String, Page<T>> fetch) {
      this.fetch = fetch;
      this.next = first;
      followed.add(first);
    }

    @Override
    public boolean hasNext() {
      while (!page.hasNext() && next != null) {
        Page<T> fetched = fetch.apply(next);
        page = fetched.items().iterator();
        String token = fetched.nextPageToken();
        if (token.isEmpty()) {
          next = null;
        } else if (!followed.add(token)) {
          // The page that carried the repeat is still given; the walk fails after it.
          next = null;
          page = new Failing<>(page, followed.size());
        } else {
          next = token;
        }
      }
      return page.hasNext();
    }

    @Override
    public T next() {
      if (!hasNext()) {
        throw new NoSuchElementException("no more items");
      }
      return page.next();
    }
  }

  /** A page's items, then the repeated-token error instead of the end. */
  private static final class Failing<T> implements Iterator<T> {
    private final Iterator<T> items;
    private final int pages;

    Failing(Iterator<T> items, int pages) {
      this.items = items;
      this.pages = pages;
    }

    @Override
    public boolean hasNext() {
      if (items.hasNext()) {
        return true;
      }
      throw pageTokenRepeated(pages);
    }

    @Override
    public T next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      return items.next();
    }
  }
}
