/**
 * A clock the test moves by hand: wall and monotonic time advance together, and timers fire
 * (in order of their due time) only when `advance` passes them.
 */
import type { Clock, Timeout } from '../../src/clock.js';

export class FakeClock implements Clock {
  /** Wall-clock ms; the monotonic clock keeps a fixed distance from it unless `stepWall` moves it alone. */
  wall: number;
  mono: number;
  #timers: { at: number; fire: () => void }[] = [];

  constructor(wallMs = Date.now(), monoMs = 1_000_000_000_100) {
    this.wall = wallMs;
    this.mono = monoMs;
  }

  now(): number {
    return this.wall;
  }

  monotonic(): number {
    return this.mono;
  }

  timeout(ms: number): Timeout {
    let fire!: () => void;
    const done = new Promise<void>((r) => {
      fire = r;
    });
    const timer = { at: this.mono + Math.max(0, ms), fire };
    this.#timers.push(timer);
    const cancel = () => {
      this.#timers = this.#timers.filter((t) => t !== timer);
    };
    return { done, cancel };
  }

  /** Timers not yet fired or cancelled. */
  get pendingTimers(): number {
    return this.#timers.length;
  }

  /** Moves both clocks on by `ms` and fires every timer now due. */
  advance(ms: number): void {
    this.wall += ms;
    this.mono += ms;
    const due = this.#timers.filter((t) => t.at <= this.mono).sort((a, b) => a.at - b.at);
    this.#timers = this.#timers.filter((t) => t.at > this.mono);
    for (const t of due) t.fire();
  }

  /** Steps the wall clock alone (NTP), as a server or host clock change would. */
  stepWall(ms: number): void {
    this.wall += ms;
  }
}

/**
 * Waits (polling each millisecond, at most `limitMs` of real time) until `condition` holds: for
 * real I/O a test must let happen, such as a request reaching a local IdP. Throws when it never does.
 */
export async function until(condition: () => boolean, what: string, limitMs = 5000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Moves `clock` on in steps of `stepMs`, letting I/O and promises run between, until `work` settles. */
export async function advanceUntilSettled<T>(clock: FakeClock, work: Promise<T>, stepMs: number, limitMs = 60_000): Promise<T> {
  let settled = false;
  const watched = work.finally(() => {
    settled = true;
  });
  watched.catch(() => undefined);
  for (let moved = 0; !settled; moved += stepMs) {
    if (moved > limitMs) throw new Error(`still not settled after ${limitMs} ms on the fake clock`);
    await new Promise((r) => setImmediate(r));
    if (!settled) clock.advance(stepMs);
  }
  return watched;
}
