/**
 * One AbortSignal that follows several, with listeners removed once the caller is done.
 * (AbortSignal.any would do, but ties each result to the long-lived client signal.)
 */

export interface LinkedSignal {
  readonly signal: AbortSignal;
  /** Detaches from the source signals; call it when the operation has finished. */
  release(): void;
}

export function linkSignals(...sources: ReadonlyArray<AbortSignal | undefined>): LinkedSignal {
  const present = sources.filter((s): s is AbortSignal => s !== undefined);
  if (present.length === 1) return { signal: present[0]!, release: () => {} };
  const controller = new AbortController();
  const release = (): void => {
    for (const source of present) source.removeEventListener("abort", onAbort);
  };
  function onAbort(this: AbortSignal): void {
    controller.abort(this.reason);
    release();
  }
  for (const source of present) {
    if (source.aborted) {
      controller.abort(source.reason);
      release();
      break;
    }
    source.addEventListener("abort", onAbort);
  }
  return { signal: controller.signal, release };
}
