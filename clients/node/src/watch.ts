/**
 * WatchExpiring as an AsyncIterable that reconnects by itself.
 *
 * The watch keeps a checkpoint: the sequence of the last event it yielded, or the
 * `latestSequence` of the last HEARTBEAT or SNAPSHOT_COMPLETE. When the stream breaks it
 * waits (a random time below a cap of 1 s doubling up to 30 s, back to 1 s after any
 * message, and at least what a RetryInfo asks) and reopens the stream with `resumeAfter` =
 * the checkpoint, so the server replays exactly what was missed; an event whose sequence is
 * not past the checkpoint is dropped, so none is yielded twice. Errors that a retry cannot
 * fix (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED,
 * FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, DATA_LOSS) end the iteration by throwing;
 * the caller's signal or closing the client ends it quietly. Everything else reconnects.
 *
 * A server whose event loop is stuck still answers HTTP/2 pings, so keepalive never notices
 * it. The server says how often it sends a HEARTBEAT (`heartbeatInterval` on HEARTBEAT and
 * SNAPSHOT_COMPLETE); once the watch knows it, a stream that brings no message at all for
 * three intervals (at least 5 s) is cancelled and resumed like a dropped one, and
 * `onReconnect` is told an UnavailableError with reason HEARTBEAT_MISSED. A server that does
 * not say (an older one) is waited for.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { Backoff, sleep, type BackoffPolicy } from "./backoff.js";
import { UnavailableError, toKeyturnError, type KeyturnError } from "./errors.js";
import { WATCH_ENDS_ON, retryInfoMs } from "./policy.js";
import { linkSignals } from "./signals.js";
import { statusDetailsOf } from "./status-details.js";
import {
  EventKind,
  type ExpiryEvent,
  type WatchExpiringRequestSchema,
} from "./gen/keyturn/v1/events_pb.js";

export type WatchExpiringRequestInit = MessageInitShape<typeof WatchExpiringRequestSchema>;

/** Opens one WatchExpiring stream (KeyService's or HandleService's). */
export type OpenWatchStream = (
  request: WatchExpiringRequestInit,
  options: CallOptions,
) => AsyncIterable<ExpiryEvent>;

/** Filters and behaviour of a watch. Empty filters match all the caller may see. */
export interface WatchOptions {
  /** Key or handle type names. */
  readonly types?: readonly string[];
  /** Key or handle ids. */
  readonly ids?: readonly string[];
  /** Owner principal (operators and auditors; services always see their own). */
  readonly owner?: string;
  readonly kinds?: readonly EventKind[];
  /**
   * Start after this sequence (a checkpoint saved from `lastSequence`). Unset: first the
   * snapshot of items inside their warning window, then SNAPSHOT_COMPLETE, then live events.
   */
  readonly resumeAfter?: bigint;
  /** Also yield HEARTBEAT events (they always advance the checkpoint). Default false. */
  readonly heartbeats?: boolean;
  /** Ends the iteration quietly when aborted. */
  readonly signal?: AbortSignal;
  /** Reconnect delays: caps of 1 s doubling up to 30 s, each wait drawn below its cap. */
  readonly backoff?: Partial<BackoffPolicy>;
  /** Told before each reconnect: why, after how long, and from which sequence. */
  readonly onReconnect?: (reconnect: Reconnect) => void;
  /** How long a stream may stay silent: 3 heartbeat intervals, at least 5 s. */
  readonly silence?: Partial<SilencePolicy>;
}

/**
 * How long a watch waits for the next message of any kind once the server said how often it
 * sends heartbeats: `heartbeats` intervals, and never less than `floorMs` (a server set to
 * sub-second heartbeats, or one pausing for a moment under load, is not stuck).
 */
export interface SilencePolicy {
  readonly heartbeats: number;
  readonly floorMs: number;
}

export const DEFAULT_WATCH_SILENCE: SilencePolicy = { heartbeats: 3, floorMs: 5_000 };

/** Milliseconds of silence after which a stream is given up; undefined: no limit. */
export function silenceLimitMs(policy: SilencePolicy, heartbeatMs: number | undefined): number | undefined {
  return heartbeatMs === undefined ? undefined : Math.max(policy.floorMs, policy.heartbeats * heartbeatMs);
}

/** What `onReconnect` is told. */
export interface Reconnect {
  /** Undefined when the server ended the stream without an error. */
  readonly error: KeyturnError | undefined;
  readonly delayMs: number;
  readonly resumeAfter: bigint | undefined;
}

export const DEFAULT_WATCH_BACKOFF: BackoffPolicy = {
  initialMs: 1_000,
  maxMs: 30_000,
  multiplier: 2,
};

/** A reconnecting WatchExpiring stream; iterate it once with `for await`. */
export class ExpiryWatch implements AsyncIterable<ExpiryEvent> {
  private checkpoint: bigint | undefined;
  private started = false;
  /** The server's heartbeat interval, once it said (kept across reconnects: a resumed
   * stream says it only with its first heartbeat). */
  private heartbeatMs: number | undefined;

  constructor(
    private readonly open: OpenWatchStream,
    private readonly options: WatchOptions,
    private readonly clientClosed: AbortSignal,
    private readonly extra: Pick<WatchExpiringRequestInit, "deliverTokens"> = {},
  ) {
    this.checkpoint = options.resumeAfter;
  }

  /** Where a reconnect resumes: save it to resume in another process (`resumeAfter`). */
  get lastSequence(): bigint | undefined {
    return this.checkpoint;
  }

  [Symbol.asyncIterator](): AsyncIterator<ExpiryEvent> {
    if (this.started) throw new Error("an ExpiryWatch can be iterated only once");
    this.started = true;
    return this.run();
  }

  private async *run(): AsyncGenerator<ExpiryEvent, void, undefined> {
    const backoff = new Backoff({ ...DEFAULT_WATCH_BACKOFF, ...this.options.backoff });
    const linked = linkSignals(this.options.signal, this.clientClosed);
    try {
      yield* this.reconnecting(backoff, linked.signal);
    } finally {
      linked.release();
    }
  }

  private async *reconnecting(backoff: Backoff, signal: AbortSignal): AsyncGenerator<ExpiryEvent, void, undefined> {
    const silence = { ...DEFAULT_WATCH_SILENCE, ...this.options.silence };
    while (!signal.aborted) {
      let failure: KeyturnError | undefined;
      // Ends this stream alone: when it stays silent, or when the caller stops reading.
      const stream = new AbortController();
      const linked = linkSignals(signal, stream.signal);
      let silent: KeyturnError | undefined;
      try {
        const events = this.open(this.request(), { signal: linked.signal })[Symbol.asyncIterator]();
        for (;;) {
          // The watchdog runs only while waiting for the server, never while the caller
          // holds an event.
          const limitMs = silenceLimitMs(silence, this.heartbeatMs);
          const watchdog =
            limitMs === undefined
              ? undefined
              : setTimeout(() => {
                  silent = silenceError(limitMs, this.heartbeatMs ?? 0);
                  stream.abort(silent);
                }, limitMs);
          let next: IteratorResult<ExpiryEvent>;
          try {
            next = await events.next();
          } finally {
            clearTimeout(watchdog);
          }
          if (next.done === true) break;
          backoff.reset();
          if (this.accept(next.value)) yield next.value;
        }
      } catch (reason) {
        if (signal.aborted) return;
        failure = silent ?? toKeyturnError(reason, signal);
        if (WATCH_ENDS_ON.has(failure.code)) throw failure;
      } finally {
        stream.abort();
        linked.release();
      }
      const delayMs = Math.max(backoff.next(), failure === undefined ? 0 : (retryInfoMs(failure) ?? 0));
      this.options.onReconnect?.({ error: failure, delayMs, resumeAfter: this.checkpoint });
      try {
        await sleep(delayMs, signal);
      } catch {
        return;
      }
    }
  }

  private request(): WatchExpiringRequestInit {
    const { types = [], ids = [], owner = "", kinds = [] } = this.options;
    return {
      types: [...types],
      ids: [...ids],
      owner,
      kinds: [...kinds],
      ...this.extra,
      ...(this.checkpoint === undefined ? {} : { resumeAfter: this.checkpoint }),
    };
  }

  /** Advances the checkpoint; false for events the caller must not see (again). */
  private accept(event: ExpiryEvent): boolean {
    if (event.sequence > 0n) {
      if (this.checkpoint !== undefined && event.sequence <= this.checkpoint) return false;
      this.checkpoint = event.sequence;
      return true;
    }
    if (event.kind === EventKind.HEARTBEAT || event.kind === EventKind.SNAPSHOT_COMPLETE) {
      if (this.checkpoint === undefined || event.latestSequence > this.checkpoint) {
        this.checkpoint = event.latestSequence;
      }
      const interval = event.heartbeatInterval;
      const ms = interval === undefined ? 0 : Number(interval.seconds) * 1000 + interval.nanos / 1e6;
      this.heartbeatMs = ms > 0 ? ms : undefined;
      return event.kind === EventKind.SNAPSHOT_COMPLETE || this.options.heartbeats === true;
    }
    return true; // a snapshot item: sequence 0, not part of the log
  }
}

/** What ends a stream that stayed silent past its heartbeats: a reconnect, as UNAVAILABLE. */
function silenceError(limitMs: number, heartbeatMs: number): KeyturnError {
  const error = new ConnectError(
    `no message from the server in ${limitMs / 1000} s (it sends a heartbeat every ` +
      `${heartbeatMs / 1000} s): giving up on the stream`,
    Code.Unavailable,
  );
  return new UnavailableError(error, { ...statusDetailsOf(error), reason: "HEARTBEAT_MISSED" });
}
