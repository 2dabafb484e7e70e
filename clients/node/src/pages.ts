/**
 * Walks an AIP-158 paginated list: asks for the next page only when the caller has
 * consumed the current one, and hides page tokens.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { InternalError } from "./errors.js";

/** One page as the list RPCs return it: items plus the token of the next page. */
export interface Page<Item> {
  readonly items: readonly Item[];
  /** "" on the last page. */
  readonly nextPageToken: string;
}

/**
 * Yields every item of every page, fetching pages lazily with `fetchPage(pageToken)`.
 *
 * A next page token already followed (a server or proxy replaying a page) would walk the
 * same pages for ever: it ends the walk with an InternalError (reason PAGE_TOKEN_REPEATED),
 * as gRPC reports a malformed answer, rather than a quiet stop the caller would take for
 * the complete list.
 */
export async function* walkPages<Item>(
  fetchPage: (pageToken: string) => Promise<Page<Item>>,
): AsyncGenerator<Item, void, undefined> {
  let pageToken = "";
  const followed = new Set<string>([pageToken]);
  for (;;) {
    const page = await fetchPage(pageToken);
    yield* page.items;
    pageToken = page.nextPageToken;
    if (pageToken === "") return;
    if (followed.has(pageToken)) throw pageTokenRepeated(followed.size);
    followed.add(pageToken);
  }
}

/** The error of a list whose server gave a page token again; the token stays out of it. */
function pageTokenRepeated(pages: number): InternalError {
  const message =
    `the server returned an already followed next_page_token after ${pages} page(s): ` +
    "the list cannot be walked further";
  return new InternalError(new ConnectError(message, Code.Internal), {
    reason: "PAGE_TOKEN_REPEATED",
    domain: "",
    metadata: {},
    fieldViolations: [],
    preconditionViolations: [],
    retryAfterMs: undefined,
  });
}
