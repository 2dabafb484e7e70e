/**
 * Walks an AIP-158 paginated list: asks for the next page only when the caller has
 * consumed the current one, and hides page tokens.
 */

/** One page as the list RPCs return it: items plus the token of the next page. */
export interface Page<Item> {
  readonly items: readonly Item[];
  /** "" on the last page. */
  readonly nextPageToken: string;
}

/** Yields every item of every page, fetching pages lazily with `fetchPage(pageToken)`. */
export async function* walkPages<Item>(
  fetchPage: (pageToken: string) => Promise<Page<Item>>,
): AsyncGenerator<Item, void, undefined> {
  let pageToken = "";
  do {
    const page = await fetchPage(pageToken);
    yield* page.items;
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
}
