/**
 * The requests received but not yet served, and the order they are served in.
 *
 * While the oldest waiting request has waited less than `lifoAfterMs`, requests are served in
 * arrival order. Past that the service is behind, and serving oldest-first would spend every
 * answer on the requests closest to their deadline, many of which the server gives up on
 * before the answer lands: it serves newest-first instead (adaptive LIFO), so each unit of
 * work goes to the request most likely to still be waited for, and the oldest are shed as
 * they expire, without work. Nothing is served whose answer cannot arrive before its deadline.
 *
 * Pure: the caller passes the time and the cost of answering; tests drive it with numbers.
 */

/** Why a request was dropped unanswered; every reason is a series of `oidc_callout_shed_total`. */
export const SHED_REASONS = ['expired', 'too_late', 'queue_full'] as const;
export type ShedReason = (typeof SHED_REASONS)[number];

export interface Queued<T> {
  readonly item: T;
  /** When the request reached us (ms, the caller's clock). */
  readonly receivedMs: number;
  /** When the server gives up on it; undefined when unknown (never shed by time). */
  readonly deadlineMs: number | undefined;
}

export interface RequestQueueOptions {
  /** Queue delay of the oldest entry beyond which the newest is served first. */
  readonly lifoAfterMs: number;
}

export class RequestQueue<T> {
  readonly #options: RequestQueueOptions;
  /** Oldest first; `#head` is the index of the oldest live entry. */
  #entries: (Queued<T> | undefined)[] = [];
  #head = 0;

  constructor(options: RequestQueueOptions) {
    this.#options = options;
  }

  get length(): number {
    return this.#entries.length - this.#head;
  }

  /** Whether the oldest entry has waited past `lifoAfterMs` at `nowMs` (the queue is behind). */
  lagging(nowMs: number): boolean {
    const oldest = this.#entries[this.#head];
    return oldest !== undefined && nowMs - oldest.receivedMs > this.#options.lifoAfterMs;
  }

  /** How long the oldest entry has waited (0 when empty). */
  oldestWaitMs(nowMs: number): number {
    const oldest = this.#entries[this.#head];
    return oldest ? nowMs - oldest.receivedMs : 0;
  }

  /** Adds an entry (bounds are the owner's: see `oldest` and `shiftOldest`). */
  push(entry: Queued<T>): void {
    this.#entries.push(entry);
  }

  /** The oldest entry, left in place. */
  oldest(): Queued<T> | undefined {
    return this.#entries[this.#head];
  }

  /** Removes and returns the oldest entry. */
  shiftOldest(): Queued<T> | undefined {
    return this.#shift();
  }

  /**
   * The next entry to serve at `nowMs`, when answering takes `costMs` until the server has
   * the answer in hand (our work plus the reply's way back). Entries that cannot make it are
   * handed to `shed` with the reason, without being served.
   */
  next(nowMs: number, costMs: number, shed: (entry: Queued<T>, reason: ShedReason) => void): Queued<T> | undefined {
    for (;;) {
      const oldest = this.#entries[this.#head];
      if (!oldest) return undefined;
      if (oldest.deadlineMs !== undefined && oldest.deadlineMs <= nowMs) {
        shed(this.#shift()!, 'expired');
        continue;
      }
      const entry = nowMs - oldest.receivedMs > this.#options.lifoAfterMs ? this.#pop()! : this.#shift()!;
      if (entry.deadlineMs !== undefined && entry.deadlineMs <= nowMs) shed(entry, 'expired');
      else if (entry.deadlineMs !== undefined && nowMs + costMs > entry.deadlineMs) shed(entry, 'too_late');
      else return entry;
    }
  }

  /**
   * Sheds, from the oldest end, the entries that cannot be answered in time at `nowMs` with
   * `costMs`, up to the first that still can (or whose deadline is unknown). For while nothing
   * is served: the queue does not fill with the dead.
   */
  dropHopeless(nowMs: number, costMs: number, shed: (entry: Queued<T>, reason: ShedReason) => void): void {
    for (;;) {
      const oldest = this.#entries[this.#head];
      if (!oldest || oldest.deadlineMs === undefined || nowMs + costMs <= oldest.deadlineMs) return;
      shed(this.#shift()!, oldest.deadlineMs <= nowMs ? 'expired' : 'too_late');
    }
  }

  /** Removes every entry (a drain that gives up), oldest first. */
  clear(): Queued<T>[] {
    const all = this.#entries.slice(this.#head).filter((e): e is Queued<T> => e !== undefined);
    this.#entries = [];
    this.#head = 0;
    return all;
  }

  #shift(): Queued<T> | undefined {
    const entry = this.#entries[this.#head];
    if (!entry) return undefined;
    this.#entries[this.#head++] = undefined;
    // Compact once the dead prefix dominates, so shifting stays O(1) amortized.
    if (this.#head > 1024 && this.#head * 2 > this.#entries.length) {
      this.#entries = this.#entries.slice(this.#head);
      this.#head = 0;
    }
    return entry;
  }

  #pop(): Queued<T> | undefined {
    if (this.length === 0) return undefined;
    const entry = this.#entries.pop();
    if (this.length === 0) {
      this.#entries = [];
      this.#head = 0;
    }
    return entry;
  }
}
