import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from './log.js';
import type { MetricsSources } from './metrics.js';
import { ReplyLane } from './reply-lanes.js';
import { RequestQueue, type Queued, type ShedReason } from './request-queue.js';
import { within } from './within.js';
import type { Admitted, CalloutService } from './service.js';

/** The subject nats-server publishes authorization requests on. */
export const AUTH_SUBJECT = '$SYS.REQ.USER.AUTH';

/** Tuning of the scheduler; the defaults are the measured ones (bench/README.md). */
export interface RunnerOptions {
  /** Requests held waiting at most, over all connections (the oldest is shed beyond it). */
  readonly maxQueue?: number;
  /** Bytes of requests (payload, xkey header, reply subject) held waiting at most (clients choose a request's size). */
  readonly maxQueueBytes?: number;
  /** Queue delay after which the newest requests are served first. */
  readonly lifoAfterMs?: number;
  /** Work done in one turn of the event loop before reading the sockets again. */
  readonly sliceMs?: number;
  /** Answers per connection nats-server may hold unconfirmed (see reply-lanes.ts). */
  readonly laneWindow?: number;
  /**
   * How long `stop()` waits for the subscriptions to drain and the queued requests to be
   * answered before dropping them; the connections' own drain is bounded by it again.
   */
  readonly drainTimeoutMs?: number;
  /** Queued work (requests times their cost, ms) beyond which arriving requests are kept unopened. */
  readonly lazyBacklogMs?: number;
}

const DEFAULTS = {
  maxQueue: 10_000,
  maxQueueBytes: 32 * 1024 * 1024,
  lifoAfterMs: 100,
  sliceMs: 5,
  laneWindow: 16,
  drainTimeoutMs: 10_000,
  lazyBacklogMs: 1_000,
} as const;
/** The longest wait an unopened request may be kept for, whatever budgets servers give. */
const MAX_BUDGET_BOUND_MS = 60_000;
/** While work waits on full or disconnected lanes, the queues are still looked at this often. */
const HOLD_TICK_MS = 50;
/**
 * Requests larger than this are kept unopened until picked. Opened, a request is its parsed JSON,
 * which can take many times its bytes (a publisher's `[{},{},...]`), and the byte bound counts
 * wire bytes; nats-server's own requests are a few KiB (the token, at most `token.max_bytes`, and
 * the client's certificates).
 */
const OPEN_ON_ARRIVAL_MAX_BYTES = 64 * 1024;

/**
 * A request waiting for its turn. It is opened when it arrives (arrival order teaches the
 * request clock) unless its connection is already behind: then only its bytes are kept and it is
 * opened if the scheduler picks it, since under overload most requests are dropped, and opening
 * each on arrival (box, base64, JSON) would cost more than answering the live ones.
 */
interface Pending {
  admitted: Admitted | undefined;
  /** The payload and xkey header of a request not opened yet (undefined once opened). */
  raw: { readonly data: Uint8Array; readonly xkey: string | undefined } | undefined;
  readonly reply: string | undefined;
  readonly bytes: number;
  /** The connection it came on (its lane holds the count of its bytes). */
  readonly lane: number;
}

/** One NATS connection: its subscription, its reply lane and the requests it brought. */
interface Lane {
  readonly index: number;
  readonly nc: NatsConnection;
  readonly reply: ReplyLane;
  readonly queue: RequestQueue<Pending>;
  /** Bytes of the requests in `queue` (as `#queuedBytes` counts them). */
  bytes: number;
  sub: Subscription | undefined;
}

/**
 * Serves a CalloutService on one or more NATS connections, each subscribed in the queue group
 * shared by all replicas.
 *
 * A message is only opened and queued when it arrives (the socket is read again quickly, so the
 * time it arrived is known); the work happens in slices of `sliceMs`, between which the sockets
 * are read and answers flushed. Each connection keeps its own queue, because an answer goes back
 * on the connection its request came in on (reply-lanes.ts says why); the slices take requests
 * from the connections in turn, from each the next request (oldest first, newest first once the
 * queue lags, see request-queue.ts), as long as that connection's window of unconfirmed answers
 * has room. A request whose answer could not reach the server before it gives up
 * (request-clock.ts estimates that deadline, reply-lanes.ts how far behind the server is on that
 * connection) is dropped without work or answer.
 *
 * Reload swaps the service atomically; stop drains: no new requests, the queued ones are
 * answered (or shed if their time is up; after `drainTimeoutMs`, dropped), then the
 * connections close.
 */
export class CalloutRunner {
  readonly #lanes: readonly Lane[];
  readonly #log: Logger;
  readonly #sliceMs: number;
  readonly #window: number;
  readonly #maxQueue: number;
  readonly #maxQueueBytes: number;
  readonly #drainTimeoutMs: number;
  readonly #lazyBacklogMs: number;
  #service: CalloutService;
  #queued = 0;
  #queuedBytes = 0;
  #processing = 0;
  #scheduled = false;
  #holdTimer: NodeJS.Timeout | undefined;
  /** The connection the next slice starts with (round-robin). */
  #next = 0;
  /** Moving average of the work one request costs us (ms). */
  #costMs = 1;
  #idle: (() => void) | undefined;
  #stopping = false;
  /** What the scheduler did since the last `scheduler` debug line. */
  #stats = { received: 0, served: 0, expired: 0, too_late: 0, queue_full: 0, maxQueue: 0 };
  #statsTimer: NodeJS.Timeout | undefined;

  constructor(connections: NatsConnection | readonly NatsConnection[], service: CalloutService, log: Logger, options: RunnerOptions = {}) {
    const conns = Array.isArray(connections) ? connections : [connections as NatsConnection];
    if (conns.length === 0) throw new Error('CalloutRunner needs at least one NATS connection');
    this.#service = service;
    this.#log = log;
    this.#sliceMs = options.sliceMs ?? DEFAULTS.sliceMs;
    this.#window = options.laneWindow ?? DEFAULTS.laneWindow;
    this.#maxQueue = options.maxQueue ?? DEFAULTS.maxQueue;
    this.#maxQueueBytes = options.maxQueueBytes ?? DEFAULTS.maxQueueBytes;
    this.#drainTimeoutMs = options.drainTimeoutMs ?? DEFAULTS.drainTimeoutMs;
    this.#lazyBacklogMs = options.lazyBacklogMs ?? DEFAULTS.lazyBacklogMs;
    const lifoAfterMs = options.lifoAfterMs ?? DEFAULTS.lifoAfterMs;
    const now = () => this.#service.monotonicNow();
    this.#lanes = conns.map((nc, index) => ({
      index,
      nc,
      reply: new ReplyLane({ publish: (subject, data) => nc.publish(subject, data), probe: () => nc.flush() }, String(index), now, setImmediate, () => {
        if (this.#queued > 0) this.#schedule();
      }),
      queue: new RequestQueue<Pending>({ lifoAfterMs }),
      bytes: 0,
      sub: undefined,
    }));
  }

  get service(): CalloutService {
    return this.#service;
  }

  /** Requests received and not answered yet: queued plus being processed. */
  get inFlight(): number {
    return this.#queued + this.#processing;
  }

  get queueLength(): number {
    return this.#queued;
  }

  replyLaneDelays(): { connection: string; seconds: number }[] {
    const now = this.#service.monotonicNow();
    return this.#lanes.map((l) => ({ connection: l.reply.name, seconds: l.reply.delayMs(now) / 1000 }));
  }

  /** The gauges of /metrics, read from this runner and its current service at scrape time. */
  metricsSources(): MetricsSources {
    return {
      inFlight: () => this.inFlight,
      queueLength: () => this.queueLength,
      replyLaneDelays: () => this.replyLaneDelays(),
      cacheEntries: () => this.#service.cache.size,
      issuersKeysLoaded: () => this.#service.issuerStatus().map((s) => ({ issuer: s.issuer, loaded: s.keysLoaded })),
    };
  }

  /** Subscribes on every connection and waits until the server has registered each. */
  async start(): Promise<void> {
    const queue = this.#service.config.nats.queueGroup;
    for (const lane of this.#lanes) {
      lane.sub = lane.nc.subscribe(AUTH_SUBJECT, {
        queue,
        callback: (err, msg) => {
          if (err) {
            this.#log.error('subscription error', { error: err.message, connection: lane.index });
            return;
          }
          // Nothing may throw into the client's read loop: it would stop reading for good.
          try {
            this.#receive(msg, lane);
          } catch (e) {
            this.#log.error('request dropped', { error: (e as Error).message });
          }
        },
      });
    }
    await Promise.all(this.#lanes.map((l) => l.nc.flush()));
    for (const lane of this.#lanes) void this.#watchConnection(lane);
    this.#statsTimer = setInterval(() => this.#logStats(), 1000);
    this.#statsTimer.unref();
    this.#log.info('listening', {
      subject: AUTH_SUBJECT,
      queue,
      connections: this.#lanes.length,
      servers: this.#lanes[0]!.nc.getServer(),
      issuer: this.#service.issuerPublicKey,
    });
  }

  #receive(msg: Msg, lane: Lane): void {
    const service = this.#service;
    const receivedMs = service.monotonicNow();
    let xkey: string | undefined;
    try {
      xkey = msg.headers?.get('Nats-Server-Xkey') || undefined;
    } catch {
      // Malformed headers (nats-core throws on invalid names): decided as if there were none.
      xkey = undefined;
    }
    // The value nats.js decoded is a slice of the whole header block, which V8 keeps alive for
    // it: copied, so a queued request holds the value alone (nats-server sends no other header,
    // but whoever may publish on the subject can add any).
    if (xkey !== undefined) xkey = Buffer.from(xkey, 'utf8').toString('utf8');
    const reply = msg.reply || undefined;
    // What a queued request holds besides its payload, and the publisher chose too: counted.
    const bytes = msg.data.length + (xkey?.length ?? 0) + (reply?.length ?? 0);
    const bound = this.#deadlineBoundMs(service);
    const behind = this.#queued * this.#costMs > this.#lazyBacklogMs && lane.queue.lagging(receivedMs);
    if (behind || msg.data.length > OPEN_ON_ARRIVAL_MAX_BYTES) {
      // Far behind: kept unopened (a copy: the message is a view of the socket's read buffer).
      // Its deadline is not known yet; none can be later than the longest budget seen plus a
      // second (#deadlineBoundMs). Only this far behind: a request opened later is estimated
      // with what the clock learnt since it arrived, which reads it as younger than it is
      // (measured: late answers in a reconnect storm rose from 1-3 % to 10-11 % when every
      // lagging request waited so).
      // With more than a second of work queued, most of it is dropped anyway. A request too
      // large to hold parsed (OPEN_ON_ARRIVAL_MAX_BYTES) waits so too.
      // `new Uint8Array(view)` copies: `msg.data` is a Node Buffer, a view into the whole socket
      // read (up to 64 KiB) it came in, and Buffer#slice is a view as well. Kept as a view, each
      // unopened request would hold its read in memory, far beyond the bytes the queue counts.
      const data = new Uint8Array(msg.data);
      lane.queue.push({
        item: { admitted: undefined, raw: { data, xkey }, reply, bytes, lane: lane.index },
        receivedMs,
        deadlineMs: bound === undefined ? undefined : receivedMs + bound,
      });
    } else {
      const admitted = service.admit(msg.data, xkey, receivedMs, lane.index);
      if (!admitted) return;
      // Its stamps are not verified yet: a deadline they put past the longest budget a server
      // gave (plus a second) is none nats-server keeps, and would keep the dead behind it queued.
      const claimed = admitted.timing?.deadlineMs;
      const deadlineMs = bound === undefined ? claimed : Math.min(claimed ?? Number.POSITIVE_INFINITY, receivedMs + bound);
      lane.queue.push({ item: { admitted, raw: undefined, reply, bytes, lane: lane.index }, receivedMs, deadlineMs });
    }
    this.#queued++;
    this.#queuedBytes += bytes;
    lane.bytes += bytes;
    this.#stats.received++;
    if (this.#queued > this.#stats.maxQueue) this.#stats.maxQueue = this.#queued;
    // Bounded in count and in bytes, over all connections: the connection holding the most
    // gives up its oldest, so a flood on one connection (a publisher on one node of a cluster,
    // which nats-server hands to its local subscribers first) pays for its own room.
    while (this.#queued > this.#maxQueue || this.#queuedBytes > this.#maxQueueBytes) {
      const fullest = this.#fullestLane(this.#queuedBytes > this.#maxQueueBytes);
      if (!fullest) break;
      this.#shed(service, fullest.queue.shiftOldest()!, 'queue_full');
    }
    this.#schedule();
  }

  /**
   * The longest a request can still be waited for when it reaches us: the largest server
   * budget (`exp - iat`) of a request whose signature verified (request-clock.ts: a forged
   * request teaches nothing, not even this), plus the second `iat` truncates; undefined before
   * one verified. Capped, so that a request signed with a budget of hours cannot keep unopened
   * requests from being dropped for long.
   */
  #deadlineBoundMs(service: CalloutService): number | undefined {
    const budget = service.requestClock.longestBudgetMs;
    return budget === undefined ? undefined : Math.min(budget + 1000, MAX_BUDGET_BOUND_MS);
  }

  /** The connection with the most queued requests, or the most queued bytes. */
  #fullestLane(byBytes: boolean): Lane | undefined {
    const size = (l: Lane) => (byBytes ? l.bytes : l.queue.length);
    let found: Lane | undefined;
    for (const l of this.#lanes) {
      if (l.queue.length > 0 && (!found || size(l) > size(found))) found = l;
    }
    return found;
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    // setImmediate: after the sockets were read in this turn, so the queue holds all that came.
    setImmediate(() => this.#slice());
  }

  #slice(): void {
    this.#scheduled = false;
    const end = performance.now() + this.#sliceMs;
    const n = this.#lanes.length;
    let progressed = true;
    while (progressed && this.#queued > 0 && performance.now() < end) {
      progressed = false;
      for (let k = 0; k < n && performance.now() < end; k++) {
        const lane = this.#lanes[(this.#next + k) % n]!;
        if (lane.queue.length > 0 && this.#serveNext(lane)) progressed = true;
      }
      this.#next = (this.#next + 1) % n;
    }
    if (this.#queued === 0) {
      clearTimeout(this.#holdTimer);
      this.#holdTimer = undefined;
      this.#checkIdle();
    } else if (progressed) {
      this.#schedule();
    } else if (!this.#holdTimer) {
      // Every connection with work is full or down: a PONG or a reconnect reschedules; the timer
      // keeps dropping what expires meanwhile.
      this.#holdTimer = setTimeout(() => {
        this.#holdTimer = undefined;
        this.#slice();
      }, HOLD_TICK_MS);
      // The connections keep the process alive; this timer alone must not.
      this.#holdTimer.unref();
    }
  }

  /** Serves or drops the next request of one connection; false when it can take none now. */
  #serveNext(lane: Lane): boolean {
    // Reading the service once per request: a reload mid-slice keeps one consistent config.
    const service = this.#service;
    const now = service.monotonicNow();
    if (!lane.reply.connected) {
      // Its answers can only go back on this connection: whatever cannot wait for the reconnect goes.
      lane.queue.dropHopeless(now, Number.POSITIVE_INFINITY, (e, reason) =>
        this.#shed(service, e, reason, reason === 'too_late' ? `its connection to nats-server is down (connection ${lane.index})` : undefined),
      );
      return false;
    }
    const laneDelay = lane.reply.delayMs(now);
    const cost = this.#costMs + laneDelay;
    const drop = (e: Queued<Pending>, reason: ShedReason) =>
      this.#shed(
        service,
        e,
        reason,
        reason === 'too_late'
          ? `its answer could not reach the server before the deadline (${e.deadlineMs === undefined ? '?' : Math.round(e.deadlineMs - now)}ms left, connection ${lane.index} ${Math.round(laneDelay)}ms behind)`
          : undefined,
      );
    if (lane.reply.outstanding >= this.#window) {
      lane.queue.dropHopeless(now, cost, drop);
      return false;
    }
    const entry = lane.queue.next(now, cost, drop);
    if (!entry) return false;
    const started = performance.now();
    const pending = entry.item;
    if (pending.raw) {
      // Picked from a backlog: opened now; what it turns out to be past is dropped here.
      const admitted = service.admit(pending.raw.data, pending.raw.xkey, entry.receivedMs, lane.index, false);
      pending.raw = undefined;
      if (!admitted) {
        this.#dequeued(pending);
        return true;
      }
      pending.admitted = admitted;
      // Under a lasting backlog nearly every request arrives this way: a server first met now
      // (one with a longer authorization timeout) widens the bound too, or its requests kept
      // unopened would be dropped while it still waits for them. It does once its request
      // verified: in admit() for a server not known yet, else when served.
      const deadline = admitted.timing?.deadlineMs;
      if (deadline !== undefined && now + cost > deadline) {
        drop({ ...entry, deadlineMs: deadline }, deadline <= now ? 'expired' : 'too_late');
        return true;
      }
    }
    this.#dequeued(pending);
    this.#stats.served++;
    this.#serve(service, pending, laneDelay, lane.reply);
    this.#costMs = 0.9 * this.#costMs + 0.1 * (performance.now() - started);
    return true;
  }

  #dequeued(pending: Pending): void {
    this.#queued--;
    this.#queuedBytes -= pending.bytes;
    this.#lanes[pending.lane]!.bytes -= pending.bytes;
  }

  #shed(service: CalloutService, entry: Queued<Pending>, reason: ShedReason, detail?: string): void {
    this.#dequeued(entry.item);
    this.#stats[reason]++;
    const admitted = entry.item.admitted;
    if (admitted) service.shed(admitted, reason, detail);
    else
      service.shedUnopened(
        reason,
        entry.receivedMs,
        detail ??
          (reason === 'queue_full'
            ? 'the request queue is full'
            : 'it waited here longer than any server waits for an answer (the longest budget seen, plus a second)'),
      );
  }

  #logStats(): void {
    this.#service.flushShedLog();
    const s = this.#stats;
    if (s.received === 0 && s.served === 0 && this.#queued === 0) return;
    const now = this.#service.monotonicNow();
    this.#log.debug('scheduler', {
      ...s,
      queued: this.#queued,
      queued_bytes: this.#queuedBytes,
      oldest_wait_ms: Math.round(Math.max(0, ...this.#lanes.map((l) => l.queue.oldestWaitMs(now)))),
      cost_ms: Math.round(this.#costMs * 1000) / 1000,
      lane_delay_ms: this.#lanes.map((l) => Math.round(l.reply.delayMs(now))),
      lane_outstanding: this.#lanes.map((l) => l.reply.outstanding),
    });
    this.#stats = { received: 0, served: 0, expired: 0, too_late: 0, queue_full: 0, maxQueue: 0 };
  }

  #serve(service: CalloutService, pending: Pending, laneDelay: number, lane: ReplyLane): void {
    this.#processing++;
    lane.reserve();
    let sent = false;
    service
      .process(pending.admitted!, laneDelay)
      .then((reply) => {
        if (!reply || !pending.reply) return;
        lane.send(pending.reply, reply);
        sent = true;
      })
      .catch((e: unknown) => this.#log.error('reply failed', { error: (e as Error).message }))
      .finally(() => {
        if (!sent) {
          lane.release();
          // No answer went out, so no PONG will tell the lane it has room again: without this,
          // a lane full of requests refused unanswered (forged ones) waits for the hold timer,
          // one window per HOLD_TICK_MS.
          if (this.#queued > 0) this.#schedule();
        }
        this.#processing--;
        this.#checkIdle();
      });
  }

  #checkIdle(): void {
    if (this.#processing === 0 && this.#queued === 0) this.#idle?.();
  }

  /** Why this runner cannot answer requests now (readiness); empty when it can. */
  problems(): string[] {
    if (this.#stopping) return ['stopping'];
    if (this.#lanes.some((l) => !l.sub || l.sub.isClosed())) return ['not subscribed to $SYS.REQ.USER.AUTH'];
    const problems: string[] = [];
    for (const lane of this.#lanes) {
      const which = this.#lanes.length > 1 ? `NATS connection ${lane.index}` : 'NATS connection';
      if (lane.nc.isClosed()) problems.push(`${which} closed`);
      else if (!lane.reply.connected) problems.push(`${which} disconnected, reconnecting`);
    }
    return problems;
  }

  async #watchConnection(lane: Lane): Promise<void> {
    for await (const s of lane.nc.status()) {
      if (s.type === 'disconnect') {
        lane.reply.setConnected(false);
        this.#log.warn('NATS disconnected', { server: s.server, connection: lane.index });
      } else if (s.type === 'reconnect') {
        lane.reply.setConnected(true);
        this.#log.info('NATS reconnected', { server: s.server, connection: lane.index });
      }
    }
  }

  /** Replaces the service (a reloaded configuration); requests being processed finish on the old one. */
  swap(service: CalloutService): void {
    this.#service = service;
  }

  /** Drops, unanswered and logged, everything queued on `lanes`; returns how many. */
  #dropQueued(lanes: readonly Lane[], detail: string): number {
    let dropped = 0;
    for (const lane of lanes) {
      for (const entry of lane.queue.clear()) {
        this.#shed(this.#service, entry, 'too_late', detail);
        dropped++;
      }
    }
    return dropped;
  }

  /** Resolves when any connection is closed for good (the process should then exit). */
  closed(): Promise<void> {
    return Promise.race(this.#lanes.map((l) => l.nc.closed().then(() => undefined)));
  }

  /**
   * Drains: no new requests, answers the ones received (for at most `drainTimeoutMs`; what is
   * still queued then is dropped and logged), then closes the connections.
   */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#statsTimer);
    const started = performance.now();
    // A subscription (and a connection) drains once its server answers a PING: one that never
    // does (a partition without a reset, a stopped nats-server) would hold the stop until nats.js
    // finds the connection stale, minutes later. Bounded; the queued requests are served
    // meanwhile, and their wait is part of the same drain timeout.
    if (!(await within(Promise.all(this.#lanes.map((l) => l.sub?.drain().catch(() => undefined))), this.#drainTimeoutMs))) {
      for (const lane of this.#lanes) {
        try {
          if (lane.sub && !lane.sub.isClosed()) lane.sub.unsubscribe();
        } catch {
          // Closed meanwhile: nothing more arrives on it either way.
        }
      }
    }
    // A connection that is down cannot answer what it brought before we stop.
    this.#dropQueued(
      this.#lanes.filter((l) => !l.reply.connected),
      'its connection to nats-server was down when the service stopped',
    );
    if (this.inFlight > 0) {
      let timer: NodeJS.Timeout | undefined;
      const drained = await new Promise<boolean>((resolve) => {
        this.#idle = () => resolve(true);
        timer = setTimeout(() => resolve(false), Math.max(0, this.#drainTimeoutMs - (performance.now() - started)));
      });
      clearTimeout(timer);
      clearTimeout(this.#holdTimer);
      if (!drained) {
        const dropped = this.#dropQueued(this.#lanes, 'the service stopped before it could be answered');
        this.#log.error('stopped with requests still waiting', { dropped, processing: this.#processing });
      }
    }
    // The once-a-second summary stopped with the stats timer: what the drain shed beyond the
    // lines of its window (up to all that was queued) would otherwise never be logged.
    this.#service.flushShedLog(true);
    await Promise.all(
      this.#lanes.map(async (l) => {
        if (
          !(await within(
            Promise.resolve().then(() => l.nc.drain()),
            this.#drainTimeoutMs,
          ))
        )
          await l.nc.close().catch(() => undefined);
      }),
    );
  }
}
