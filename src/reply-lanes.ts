/**
 * The way back to nats-server over one NATS connection of the service, and how far behind it is.
 *
 * nats-server handles every callout answer inside the read loop of the connection that
 * published it, one after another: it opens the box, verifies the response and the user JWT and
 * registers the user there. That loop is a single lane per connection, and in a storm it falls
 * behind. Its delay is visible from our side: the server answers a PING only once it has
 * processed everything published before it. Each lane keeps one PING in flight while answers
 * are flowing; its delay is the last PING's round trip, or the age of the outstanding PING once
 * that is longer. A request whose answer would reach the server only after its deadline is not
 * worked on at all.
 *
 * An answer goes out on the connection its request came in on: a service user may only be
 * allowed to answer the requests it received (`allow_responses`), and with a cluster each
 * connection may sit on another node. The runner bounds how many answers a lane may have
 * unconfirmed (`reserve` before the work, `send` or `release` after), so the lanes are
 * self-clocking: answers go out as fast as the server takes them (each PONG frees the window),
 * and the rest wait in our queue, where the freshest can still be chosen and the stale dropped
 * for free, rather than in the server's lane, where they are processed in order.
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
  /** Places taken for answers being worked on, not published yet. */
  #reserved = 0;
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

  /** Answers reserved or sent that the server has not confirmed processing (no PONG after them yet). */
  get outstanding(): number {
    return this.#reserved + this.#covered + this.#unprobed;
  }

  /** How long an answer published now would wait before the server processes it (ms). */
  delayMs(nowMs: number): number {
    if (!this.#connected) return Number.POSITIVE_INFINITY;
    if (this.#probeSentMs !== undefined) return Math.max(this.#lastDelayMs, nowMs - this.#probeSentMs);
    return this.#unprobed > 0 || this.#reserved > 0 ? this.#lastDelayMs : 0;
  }

  /** Takes a place in the window for an answer about to be worked on. */
  reserve(): void {
    this.#reserved++;
  }

  /** Gives back a reserved place: the work ended without an answer. */
  release(): void {
    if (this.#reserved > 0) this.#reserved--;
  }

  /** Publishes a reserved answer; its place now waits for a PONG. */
  send(subject: string, data: Uint8Array): void {
    this.#conn.publish(subject, data);
    if (this.#reserved > 0) this.#reserved--;
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
    // Reservations stay: their work ends with send() or release() either way.
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
