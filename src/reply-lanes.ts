/**
 * The ways back to nats-server, one per NATS connection of the service, and how far behind
 * each one is.
 *
 * nats-server handles every callout answer inside the read loop of the connection that
 * published it, one after another: it opens the box, verifies the response and the user JWT and
 * registers the user there. That loop is a single lane per connection, and in a storm it falls
 * behind. Its delay is visible from our side: the server answers a PING only once it has
 * processed everything published before it. Each lane keeps one PING in flight while answers
 * are flowing; its delay is the last PING's round trip, or the age of the outstanding PING once
 * that is longer. An answer goes out on the lane that is least behind, and a request whose
 * answer would reach the server only after its deadline is not worked on at all.
 */

/** What a lane needs from a NATS connection. */
export interface LaneConnection {
  publish(subject: string, data: Uint8Array): void;
  /** Resolves once the server has answered a PING sent after everything published so far. */
  probe(): Promise<void>;
}

export class ReplyLane {
  readonly name: string;
  readonly #conn: LaneConnection;
  readonly #now: () => number;
  readonly #schedule: (fn: () => void) => void;
  readonly #onProbed: () => void;
  #connected = true;
  #lastDelayMs = 0;
  #probeSentMs: number | undefined;
  #probeScheduled = false;
  /** Answers published after the PING in flight (or since the last PONG when none is). */
  #unprobed = 0;
  /** Answers published before the PING in flight: the server has them, not processed yet. */
  #covered = 0;
  /** Bumped on reconnect: a PING of the old connection must not speak for the new one. */
  #generation = 0;

  /** `onProbed` is called whenever a PING comes back: the lane may have caught up. */
  constructor(conn: LaneConnection, name: string, now: () => number, schedule: (fn: () => void) => void = setImmediate, onProbed: () => void = () => {}) {
    this.#conn = conn;
    this.name = name;
    this.#now = now;
    this.#schedule = schedule;
    this.#onProbed = onProbed;
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** Answers the server has not confirmed processing (no PONG after them yet). */
  get outstanding(): number {
    return this.#covered + this.#unprobed;
  }

  /** How long an answer published now would wait before the server processes it (ms). */
  delayMs(nowMs: number): number {
    if (!this.#connected) return Number.POSITIVE_INFINITY;
    if (this.#probeSentMs !== undefined) return Math.max(this.#lastDelayMs, nowMs - this.#probeSentMs);
    return this.#unprobed > 0 ? this.#lastDelayMs : 0;
  }

  send(subject: string, data: Uint8Array): void {
    this.#conn.publish(subject, data);
    this.#unprobed++;
    // The PING goes out after this turn of the event loop, behind every answer of the turn.
    if (this.#probeSentMs === undefined && !this.#probeScheduled) {
      this.#probeScheduled = true;
      this.#schedule(() => this.#probe());
    }
  }

  setConnected(connected: boolean): void {
    if (connected === this.#connected) return;
    this.#connected = connected;
    this.#generation++;
    this.#probeSentMs = undefined;
    this.#lastDelayMs = 0;
    this.#unprobed = 0;
    this.#covered = 0;
    this.#onProbed();
  }

  #probe(): void {
    this.#probeScheduled = false;
    if (!this.#connected || this.#unprobed === 0 || this.#probeSentMs !== undefined) return;
    const generation = this.#generation;
    const sent = this.#now();
    this.#probeSentMs = sent;
    this.#covered = this.#unprobed;
    this.#unprobed = 0;
    const settle = (ok: boolean) => {
      if (generation !== this.#generation) return;
      if (ok) this.#lastDelayMs = this.#now() - sent;
      this.#probeSentMs = undefined;
      this.#covered = 0;
      if (this.#unprobed > 0 && !this.#probeScheduled) {
        this.#probeScheduled = true;
        this.#schedule(() => this.#probe());
      }
      this.#onProbed();
    };
    let pending: Promise<void>;
    try {
      pending = this.#conn.probe();
    } catch {
      settle(false);
      return;
    }
    pending.then(
      () => settle(true),
      () => settle(false),
    );
  }
}

/**
 * Chooses the lane for the next answer: the least behind (ties go round-robin) among those with
 * fewer than `window` answers the server has not confirmed yet. The window makes the lanes
 * self-clocking: answers go out as fast as the server takes them (each PONG opens the window
 * again), so they wait in our queue, where the freshest can still be chosen and the stale
 * dropped for free, rather than in the server's lane, where they are processed in order.
 */
export class ReplyLanes {
  readonly lanes: readonly ReplyLane[];
  readonly #window: number;
  #next = 0;

  constructor(lanes: readonly ReplyLane[], window = Number.POSITIVE_INFINITY) {
    this.lanes = lanes;
    this.#window = window;
  }

  /** Undefined when no lane is connected and open. */
  pick(nowMs: number): { lane: ReplyLane; delayMs: number } | undefined {
    let best: ReplyLane | undefined;
    let bestDelay = Number.POSITIVE_INFINITY;
    const n = this.lanes.length;
    for (let i = 0; i < n; i++) {
      const lane = this.lanes[(this.#next + i) % n]!;
      if (lane.outstanding >= this.#window) continue;
      const d = lane.delayMs(nowMs);
      if (d < bestDelay) {
        best = lane;
        bestDelay = d;
      }
    }
    this.#next = (this.#next + 1) % Math.max(1, n);
    return best ? { lane: best, delayMs: bestDelay } : undefined;
  }
}
