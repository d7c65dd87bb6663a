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
 *   request is taken to be as young as its stamp permits.
 *
 * Only requests whose signature verified teach the offset (a forged `iat` could otherwise make
 * every real request look stale). A server clock stepping backwards makes its requests look
 * old: when every request from a server for 2 s arrives already past its deadline, the offset
 * is forgotten and learnt anew. That reset can only make the estimate more lenient, so any
 * request may count towards it.
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
  /** False while this server's clock offset is not known yet. */
  readonly calibrated: boolean;
}

const OFFSET_BUCKET_MS = 10_000;
const UPSTREAM_WINDOW_MS = 1_500;
/** Before calibration, the server's clock is trusted this far. */
const UNCALIBRATED_SKEW_MS = 10_000;
const STEP_DETECT_MS = 2_000;
const STEP_DETECT_COUNT = 10;
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
  #expiredSince: number | undefined;
  #expiredCount = 0;

  get offset(): number {
    return Math.min(this.#current, this.#previous);
  }

  observe(s: Sample): void {
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
    if (this.#boundaryMs < nowMs - UPSTREAM_WINDOW_MS || !min) return undefined;
    return Math.max(0, min.lag - this.offset);
  }

  /** Records a request that arrived already past its deadline; true when the offset was reset. */
  expiredOnArrival(receivedMs: number): boolean {
    if (this.#expiredSince === undefined) this.#expiredSince = receivedMs;
    this.#expiredCount++;
    if (receivedMs - this.#expiredSince < STEP_DETECT_MS || this.#expiredCount < STEP_DETECT_COUNT) return false;
    this.#current = this.#previous = Infinity;
    this.#minima = [];
    this.#front = 0;
    this.#lastIat = undefined;
    this.#boundaryMs = -Infinity;
    this.freshOnArrival();
    return true;
  }

  freshOnArrival(): void {
    this.#expiredSince = undefined;
    this.#expiredCount = 0;
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

  /**
   * Estimates a request's timing from its (not yet verified) stamps. Undefined when the request
   * carries no usable `iat`/`exp`: then nothing is known about its deadline.
   */
  estimate(serverId: string, iat: unknown, exp: unknown, receivedMs: number): RequestTiming | undefined {
    if (!isSeconds(iat) || !isSeconds(exp) || exp <= iat) return undefined;
    const budgetMs = (exp - iat) * 1000;
    const lag = receivedMs - iat * 1000;
    const server = this.#servers.get(serverId);
    const offset = server?.offset ?? Infinity;
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

  /** Learns from a request whose signature verified. */
  observe(serverId: string, iat: unknown, receivedMs: number): void {
    if (!isSeconds(iat)) return;
    let server = this.#servers.get(serverId);
    if (!server) {
      // Bounded: real servers are few; evicting the oldest only costs it a recalibration.
      if (this.#servers.size >= MAX_SERVERS) this.#servers.delete(this.#servers.keys().next().value!);
      server = new ServerClock();
      this.#servers.set(serverId, server);
    }
    server.observe({ receivedMs, lag: receivedMs - iat * 1000, iat });
  }

  /**
   * Reports whether a request from this server arrived already past its estimated deadline
   * (before any queueing of ours). Returns true when that has lasted long enough to take it for
   * a step of the server's clock, and the offset was forgotten.
   */
  noteArrival(serverId: string, expired: boolean, receivedMs: number): boolean {
    const server = this.#servers.get(serverId);
    if (!server) return false;
    if (!expired) {
      server.freshOnArrival();
      return false;
    }
    return server.expiredOnArrival(receivedMs);
  }

  calibrated(serverId: string): boolean {
    return (this.#servers.get(serverId)?.offset ?? Infinity) !== Infinity;
  }
}

function isSeconds(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}
