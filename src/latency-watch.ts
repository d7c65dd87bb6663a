/**
 * Whether authorization decisions are getting slow, over the last WINDOW_SECONDS: readiness
 * that means it. nats-server gives up on a request after its authorization timeout (2 s by
 * default), so an answer near it is as good as lost; a port that is open is not enough.
 */
import type { DecisionObserver } from './metrics.js';

const WINDOW_SECONDS = 30;
/** Fewer requests than this in the window say nothing either way. */
const MIN_REQUESTS = 20;
/** The share of slow (or dropped) requests that makes the service not ready. */
const SLOW_SHARE = 0.05;

interface Bucket {
  second: number;
  answered: number;
  slow: number;
  shed: number;
}

export class LatencyWatch implements DecisionObserver {
  readonly #limitSeconds: number;
  readonly #now: () => number;
  readonly #buckets: Bucket[] = Array.from({ length: WINDOW_SECONDS }, () => ({ second: -1, answered: 0, slow: 0, shed: 0 }));

  /** `limitSeconds`: an answer later than this after the request arrived counts as slow. `now`: ms. */
  constructor(limitSeconds: number, now: () => number) {
    this.#limitSeconds = limitSeconds;
    this.#now = now;
  }

  #bucket(): Bucket {
    const second = Math.floor(this.#now() / 1000);
    const b = this.#buckets[second % WINDOW_SECONDS]!;
    if (b.second !== second) Object.assign(b, { second, answered: 0, slow: 0, shed: 0 });
    return b;
  }

  decided(_result: string, _code: string | undefined, _cached: boolean | undefined, seconds: number | undefined): void {
    if (seconds !== undefined) this.answered(seconds);
  }

  jwksFetched(): void {}

  /** A request answered `seconds` after it arrived. */
  answered(seconds: number): void {
    const b = this.#bucket();
    b.answered++;
    if (seconds > this.#limitSeconds) b.slow++;
  }

  /** A request dropped unanswered because its answer could not arrive in time. */
  shed(): void {
    this.#bucket().shed++;
  }

  /** The readiness problem; none while decisions are fast enough (or too few to tell). */
  problems(): string[] {
    const oldest = Math.floor(this.#now() / 1000) - WINDOW_SECONDS + 1;
    let answered = 0;
    let slow = 0;
    let shed = 0;
    for (const b of this.#buckets) {
      if (b.second < oldest) continue;
      answered += b.answered;
      slow += b.slow;
      shed += b.shed;
    }
    const total = answered + shed;
    if (total < MIN_REQUESTS || slow + shed <= SLOW_SHARE * total) return [];
    return [
      `decisions are slow: of ${total} requests in the last ${WINDOW_SECONDS}s, ${slow} were answered after more than ` +
        `${this.#limitSeconds}s and ${shed} were dropped because their answer could not arrive in time`,
    ];
  }
}
