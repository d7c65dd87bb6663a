/**
 * When did nats-server issue an authorization request, and when does it stop waiting for the
 * answer? Both on OUR clock, so that a request nobody waits for any more can be dropped before
 * any work is spent on it.
 *
 * The server stamps each request with `iat` and `exp = iat + authorization timeout`, in whole
 * seconds of its own clock. Three unknowns separate that stamp from our clock:
 *
 * - the offset between the two clocks (skew plus the shortest transit): learnt per server as
 *   the smallest `received - iat` seen over the last 10-20 s of verified requests. Some request
 *   issued just after a second boundary and delivered promptly always comes along, so the
 *   minimum converges on the offset; it follows drift and a clock stepping forward at once;
 * - the fraction of a second truncated from `iat` (0-999 ms): the age of one request is only
 *   known within one second from its own stamp. Requests arrive in the order they were issued,
 *   so within the last 1.5 s the smallest `received - iat - offset` across a second boundary
 *   is the delay every recent request suffered on its way here (the server's outbound buffer,
 *   the sockets, our read loop). That delay, kept within the one-second bounds the request's own
 *   stamp allows, is its age on arrival;
 * - before a server's offset is known: its clock is trusted to be within 10 s of ours, and a
 *   request is taken to be as young as its stamp permits. The service verifies the first request
 *   of such a server at once, so the offset is known from the second request on.
 *
 * Only requests whose signature verified teach the offset (a forged `iat` could otherwise make
 * every real request look stale). An offset nothing has confirmed for 20 s is forgotten. A server
 * clock stepping backwards makes its requests look old at once: `received - iat` jumps by more
 * than the time between two arrivals on one connection (a backlog, however deep, grows it at
 * most that fast), and stays up: after three such arrivals in a row the offset is forgotten and
 * learnt anew (a lone late request, which the next prompt one contradicts, is not a step), from
 * requests received since: one received before and verified later from a queue carries the old clock.
 * Forgetting can only make estimates more lenient, so any request may trigger it.
 */

/** Timing of one request, on our clock (ms). */
export interface RequestTiming {
  /** Estimated time the server issued the request. */
  readonly issuedMs: number;
  /** Estimated time the server stops waiting: `issuedMs + budgetMs`. */
  readonly deadlineMs: number;
  /** The server's authorization timeout, `exp - iat`. */
  readonly budgetMs: number;
  /** Estimated age when it reached us. */
  readonly ageOnArrivalMs: number;
  /** False while this server's clock offset is not known. */
  readonly calibrated: boolean;
}

const OFFSET_BUCKET_MS = 10_000;
/** An offset no verified request has confirmed for this long is forgotten. */
const FORGET_AFTER_MS = 2 * OFFSET_BUCKET_MS;
const UPSTREAM_WINDOW_MS = 1_500;
/** Before calibration, the server's clock is trusted this far. */
const UNCALIBRATED_SKEW_MS = 10_000;
/**
 * How much faster than real time `received - iat` may grow between two arrivals before it is
 * taken for a step of the server's clock: one truncated second plus scheduling jitter.
 */
const STEP_TOLERANCE_MS = 1_500;
/** Most of the time between two arrivals that may explain a growth of their lag. */
const MAX_GAP_ALLOWANCE_MS = 1_000;
/** Arrivals in a row that must stay jumped before a step is believed. */
const STEP_CONFIRMATIONS = 3;
const MAX_STREAMS = 64;
const MAX_SERVERS = 1024;
/** `iat` is truncated to whole seconds: a request was issued up to this much after its stamp. */
const TRUNCATION_MS = 999;

interface Sample {
  readonly receivedMs: number;
  /** received - iat * 1000 */
  readonly lag: number;
  readonly iat: number;
}

class ServerClock {
  #bucketStart = -Infinity;
  #current = Infinity;
  #previous = Infinity;
  #lastTaughtMs = -Infinity;
  /**
   * The samples of the last UPSTREAM_WINDOW_MS that can still be the window's minimum: lags
   * increase from front to back (a sliding-window minimum in O(1) amortized per sample).
   */
  #minima: Sample[] = [];
  #front = 0;
  #lastIat: number | undefined;
  #lastReceivedMs = -Infinity;
  /** Received time of the older sample of the latest pair whose `iat` differs. */
  #boundaryMs = -Infinity;
  /** The last arrival (verified or not) per connection, for step detection. */
  #arrivals = new Map<number, { readonly receivedMs: number; readonly lag: number }>();
  /** A jump seen, not yet confirmed: arrivals since at or above `level`. */
  #suspect: { readonly baseline: number; readonly level: number; count: number } | undefined;
  /**
   * When the latest step back was confirmed. A request received before it was stamped by the
   * clock before the step; verified later (it waited in a queue) it would teach the old offset
   * again, and every fresh request would look older by the step until that was forgotten.
   */
  #steppedAtMs = -Infinity;

  /** The clock offset at `nowMs`; Infinity when unknown or forgotten. */
  offsetAt(nowMs: number): number {
    return nowMs - this.#lastTaughtMs > FORGET_AFTER_MS ? Infinity : Math.min(this.#current, this.#previous);
  }

  observe(s: Sample): void {
    if (s.receivedMs < this.#steppedAtMs) return;
    if (s.receivedMs - this.#lastTaughtMs > FORGET_AFTER_MS) this.forget();
    this.#lastTaughtMs = Math.max(this.#lastTaughtMs, s.receivedMs);
    if (s.receivedMs - this.#bucketStart >= OFFSET_BUCKET_MS) {
      this.#previous = s.receivedMs - this.#bucketStart >= 2 * OFFSET_BUCKET_MS ? Infinity : this.#current;
      this.#current = Infinity;
      this.#bucketStart = s.receivedMs;
    }
    this.#current = Math.min(this.#current, s.lag);
    if (this.#lastIat !== undefined && this.#lastIat !== s.iat) this.#boundaryMs = this.#lastReceivedMs;
    this.#lastIat = s.iat;
    this.#lastReceivedMs = s.receivedMs;
    while (this.#minima.length > this.#front && this.#minima[this.#minima.length - 1]!.lag >= s.lag) this.#minima.pop();
    this.#minima.push(s);
    this.#trim(s.receivedMs);
  }

  /** The delay recent requests suffered before reaching us, when a second boundary shows it. */
  upstreamDelay(nowMs: number): number | undefined {
    this.#trim(nowMs);
    const min = this.#minima[this.#front];
    const offset = this.offsetAt(nowMs);
    if (this.#boundaryMs < nowMs - UPSTREAM_WINDOW_MS || !min || offset === Infinity) return undefined;
    return Math.max(0, min.lag - offset);
  }

  /**
   * Records any arrival on connection `stream`; true when a jump of its lag was confirmed as a
   * clock step and the offset forgotten.
   */
  arrived(receivedMs: number, lag: number, stream: number, genuine: () => boolean): boolean {
    const previous = this.#arrivals.get(stream);
    const suspect = this.#suspect;
    // The arrival is not verified yet. One that would raise, clear or confirm a suspected step
    // counts only if its signature verifies (rare: only around a jump), so that forged requests
    // stamped with the server's old clock cannot keep a real step from being believed, nor
    // forged jumps make one up. Forged, it is ignored altogether.
    const matters = suspect
      ? lag <= suspect.baseline + STEP_TOLERANCE_MS || lag >= suspect.level
      : previous !== undefined && lag - previous.lag > Math.min(Math.max(0, receivedMs - previous.receivedMs), MAX_GAP_ALLOWANCE_MS) + STEP_TOLERANCE_MS;
    if (matters && !genuine()) return false;
    if (!previous && this.#arrivals.size >= MAX_STREAMS) this.#arrivals.clear();
    this.#arrivals.set(stream, { receivedMs, lag });
    if (suspect) {
      if (lag <= suspect.baseline + STEP_TOLERANCE_MS) this.#suspect = undefined;
      else if (lag >= suspect.level && ++suspect.count >= STEP_CONFIRMATIONS) {
        this.#suspect = undefined;
        if (this.offsetAt(receivedMs) === Infinity) return false;
        this.forget();
        this.#steppedAtMs = receivedMs;
        return true;
      }
      return false;
    }
    // A jump past the time since the connection's previous arrival (`matters` above; the
    // allowance is capped: with few requests per connection a long gap would hide any step, and
    // a false alarm needs three confirmations and only makes estimates more lenient).
    if (matters && previous) {
      this.#suspect = { baseline: previous.lag, level: previous.lag + (lag - previous.lag) / 2, count: 1 };
    }
    return false;
  }

  forget(): void {
    this.#current = this.#previous = Infinity;
    this.#bucketStart = -Infinity;
    this.#lastTaughtMs = -Infinity;
    this.#minima = [];
    this.#front = 0;
    this.#lastIat = undefined;
    this.#boundaryMs = -Infinity;
  }

  #trim(nowMs: number): void {
    const m = this.#minima;
    while (this.#front < m.length && m[this.#front]!.receivedMs < nowMs - UPSTREAM_WINDOW_MS) this.#front++;
    // Compact once the consumed prefix dominates.
    if (this.#front > 256 && this.#front * 2 > m.length) {
      this.#minima = m.slice(this.#front);
      this.#front = 0;
    }
  }
}

/** Per-server clock estimates; bounded, kept across reloads. */
export class RequestClock {
  readonly #servers = new Map<string, ServerClock>();
  #longestBudgetMs: number | undefined;

  /**
   * Estimates a request's timing from its (not yet verified) stamps. Undefined when the request
   * carries no usable `iat`/`exp`: then nothing is known about its deadline.
   */
  estimate(serverId: string, iat: unknown, exp: unknown, receivedMs: number): RequestTiming | undefined {
    if (!isSeconds(iat) || !isSeconds(exp) || exp <= iat) return undefined;
    const budgetMs = (exp - iat) * 1000;
    const lag = receivedMs - iat * 1000;
    const server = this.#servers.get(serverId);
    const offset = server?.offsetAt(receivedMs) ?? Infinity;
    let age: number;
    if (offset === Infinity) {
      age = Math.max(0, lag - UNCALIBRATED_SKEW_MS - TRUNCATION_MS);
    } else {
      const youngest = Math.max(0, lag - offset - TRUNCATION_MS);
      const oldest = Math.max(0, lag - offset);
      const upstream = server!.upstreamDelay(receivedMs);
      age = upstream === undefined ? youngest : Math.min(oldest, Math.max(youngest, upstream));
    }
    const issuedMs = receivedMs - age;
    return { issuedMs, deadlineMs: issuedMs + budgetMs, budgetMs, ageOnArrivalMs: age, calibrated: offset !== Infinity };
  }

  /**
   * The longest authorization timeout (`exp - iat`, ms) of a verified request; undefined until
   * one verified. A forged budget would keep a backlog of dead requests alive (runner.ts).
   */
  get longestBudgetMs(): number | undefined {
    return this.#longestBudgetMs;
  }

  /** Learns from a request whose signature verified (its `iat` and, for the budget, `exp`). */
  observe(serverId: string, iat: unknown, receivedMs: number, exp?: unknown): void {
    if (!isSeconds(iat)) return;
    if (isSeconds(exp) && exp > iat) this.#longestBudgetMs = Math.max(this.#longestBudgetMs ?? 0, (exp - iat) * 1000);
    this.#server(serverId).observe({ receivedMs, lag: receivedMs - iat * 1000, iat });
  }

  /**
   * Records the arrival of any request (verified or not) of a known server on connection
   * `stream`. Returns true when its stamps jumped back like a stepped clock (confirmed) and the
   * server's offset was forgotten. `genuine` verifies the request (once; the caller keeps the
   * result): asked only when this arrival would change what is believed about a step.
   */
  noteArrival(serverId: string, iat: unknown, receivedMs: number, stream = 0, genuine: () => boolean = () => true): boolean {
    if (!isSeconds(iat)) return false;
    // A plain lookup: only verified requests keep a server recent (see #server).
    return this.#servers.get(serverId)?.arrived(receivedMs, receivedMs - iat * 1000, stream, genuine) ?? false;
  }

  calibrated(serverId: string, nowMs: number): boolean {
    return (this.#servers.get(serverId)?.offsetAt(nowMs) ?? Infinity) !== Infinity;
  }

  #server(serverId: string): ServerClock {
    let server = this.#servers.get(serverId);
    if (server) {
      // Most recently verified last, so eviction takes the server unheard of for longest.
      this.#servers.delete(serverId);
      this.#servers.set(serverId, server);
      return server;
    }
    // Bounded: real servers are few; evicting one only costs it a recalibration.
    if (this.#servers.size >= MAX_SERVERS) this.#servers.delete(this.#servers.keys().next().value!);
    server = new ServerClock();
    this.#servers.set(serverId, server);
    return server;
  }
}

function isSeconds(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}
