import type { ShedReason } from './request-queue.js';

/**
 * Shed requests, and requests refused before their signature verified, logged one by one per
 * window; beyond it they are counted and summarized.
 */
const LINES_PER_WINDOW = 100;
const WINDOW_MS = 1000;

/** What was shed without a line of its own during one window. */
export interface ShedSummary {
  readonly expired: number;
  readonly too_late: number;
  readonly queue_full: number;
  /** Refused unverified (unreadable, not signed by the server it names, ...): whoever can publish on the subject chooses how many. */
  readonly unverified: number;
  readonly window_ms: number;
}

/**
 * Bounds the log lines of shed requests. A shed request costs nothing else: under overload,
 * tens of thousands arrive per second, and a synchronous JSON line (and audit event) for each
 * would cost the service more than answering the live ones. The first LINES_PER_WINDOW of a
 * window are logged as decisions; the rest are counted (metrics count every one) and said in one
 * summary line when the window ends. Kept across reloads.
 */
/** Nothing suppressed yet. */
const none = () => ({ expired: 0, too_late: 0, queue_full: 0, unverified: 0 });

export class ShedLog {
  #windowStart = Number.NEGATIVE_INFINITY;
  #lines = 0;
  #suppressed = none();

  /** Whether this shed (or unverified refusal) gets a line of its own; `summary` is the previous window's, when due. */
  take(reason: ShedReason | 'unverified', nowMs: number): { readonly line: boolean; readonly summary: ShedSummary | undefined } {
    const summary = this.flush(nowMs);
    if (this.#lines < LINES_PER_WINDOW) {
      this.#lines++;
      return { line: true, summary };
    }
    this.#suppressed[reason]++;
    return { line: false, summary };
  }

  /**
   * Closes the window once it has ended (or at once with `final`: the service stops, and what
   * its last window shed without a line would otherwise never be said); its summary when
   * something went unlogged.
   */
  flush(nowMs: number, final = false): ShedSummary | undefined {
    if (!final && nowMs - this.#windowStart < WINDOW_MS) return undefined;
    const s = this.#suppressed;
    const summary = Object.values(s).some((n) => n > 0) ? { ...s, window_ms: Math.round(nowMs - this.#windowStart) } : undefined;
    this.#windowStart = nowMs;
    this.#lines = 0;
    this.#suppressed = none();
    return summary;
  }
}
