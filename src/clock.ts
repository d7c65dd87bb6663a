/**
 * The one clock of a service: wall time for tokens and JWTs, a monotonic clock for request
 * deadlines, and timers on that same monotonic clock. Tests inject a clock they move by hand, so
 * no decision depends on how fast the machine running the tests is.
 */
export interface Clock {
  /** Wall-clock milliseconds since the epoch (token and JWT times). */
  now(): number;
  /** Milliseconds on a clock that never steps (request deadlines, cooldowns of waits). */
  monotonic(): number;
  /** Resolves once `ms` have passed on the monotonic clock; `cancel` drops the timer. */
  timeout(ms: number): Timeout;
}

export interface Timeout {
  readonly done: Promise<void>;
  cancel(): void;
}

/** Monotonic milliseconds aligned with the wall clock at start, so both read alike in logs. */
const monotonic = (): number => performance.timeOrigin + performance.now();

export const systemClock: Clock = {
  now: Date.now,
  monotonic,
  timeout(ms) {
    let timer: NodeJS.Timeout | undefined;
    const done = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.max(0, ms));
    });
    return { done, cancel: () => clearTimeout(timer) };
  },
};
