import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from './log.js';
import type { MetricsSources } from './metrics.js';
import { ReplyLane, ReplyLanes } from './reply-lanes.js';
import { RequestQueue, type ShedReason } from './request-queue.js';
import type { Admitted, CalloutService } from './service.js';

/** The subject nats-server publishes authorization requests on. */
export const AUTH_SUBJECT = '$SYS.REQ.USER.AUTH';

/** Tuning of the scheduler; the defaults are the measured ones (bench/README.md). */
export interface RunnerOptions {
  /** Requests held waiting at most (the oldest is shed beyond it). */
  readonly maxQueue?: number;
  /** Queue delay after which the newest requests are served first. */
  readonly lifoAfterMs?: number;
  /** Work done in one turn of the event loop before reading the sockets again. */
  readonly sliceMs?: number;
  /** Answers per connection nats-server may hold unprocessed (see ReplyLanes). */
  readonly laneWindow?: number;
}

const DEFAULTS = { maxQueue: 10_000, lifoAfterMs: 100, sliceMs: 5, laneWindow: 8 } as const;

interface Pending {
  readonly admitted: Admitted;
  readonly reply: string | undefined;
}

/**
 * Serves a CalloutService on one or more NATS connections, each subscribed in the queue group
 * shared by all replicas.
 *
 * A message is only opened and queued when it arrives (the socket is read again quickly, so the
 * time it arrived is known); the work happens in slices of `sliceMs`, between which the sockets
 * are read and answers flushed. Each slice takes the next request from the queue (oldest first,
 * newest first once the queue lags, see request-queue.ts) and drops, without work or answer,
 * every request whose answer could not reach the server before it gives up (request-clock.ts
 * estimates that deadline; reply-lanes.ts how far behind the server is in taking our answers).
 * Answers go out on the connection the server is least behind on, with at most `laneWindow` of
 * them unconfirmed per connection: when every lane is full, the queue waits for a PONG.
 *
 * Reload swaps the service atomically; stop drains: no new requests, the queued ones are
 * answered (or shed if their time is up), then the connections close.
 */
export class CalloutRunner {
  readonly #conns: readonly NatsConnection[];
  readonly #log: Logger;
  readonly #lanes: ReplyLanes;
  readonly #queue: RequestQueue<Pending>;
  readonly #sliceMs: number;
  #service: CalloutService;
  #subs: Subscription[] = [];
  #processing = 0;
  #scheduled = false;
  /** Moving average of the work one request costs us (ms). */
  #costMs = 1;
  #idle: (() => void) | undefined;
  #stopping = false;
  /** What the scheduler did since the last `scheduler` debug line. */
  #stats = { received: 0, served: 0, expired: 0, too_late: 0, queue_full: 0, maxQueue: 0 };
  #statsTimer: NodeJS.Timeout | undefined;

  constructor(connections: NatsConnection | readonly NatsConnection[], service: CalloutService, log: Logger, options: RunnerOptions = {}) {
    this.#conns = Array.isArray(connections) ? connections : [connections as NatsConnection];
    if (this.#conns.length === 0) throw new Error('CalloutRunner needs at least one NATS connection');
    this.#service = service;
    this.#log = log;
    this.#sliceMs = options.sliceMs ?? DEFAULTS.sliceMs;
    this.#queue = new RequestQueue({
      maxLength: options.maxQueue ?? DEFAULTS.maxQueue,
      lifoAfterMs: options.lifoAfterMs ?? DEFAULTS.lifoAfterMs,
    });
    const now = () => this.#service.monotonicNow();
    this.#lanes = new ReplyLanes(
      this.#conns.map(
        (nc, i) =>
          new ReplyLane({ publish: (subject, data) => nc.publish(subject, data), probe: () => nc.flush() }, String(i), now, setImmediate, () => {
            if (this.#queue.length > 0) this.#schedule();
          }),
      ),
      options.laneWindow ?? DEFAULTS.laneWindow,
    );
  }

  get service(): CalloutService {
    return this.#service;
  }

  /** Requests received and not answered yet: queued plus being processed. */
  get inFlight(): number {
    return this.#queue.length + this.#processing;
  }

  get queueLength(): number {
    return this.#queue.length;
  }

  replyLaneDelays(): { connection: string; seconds: number }[] {
    const now = this.#service.monotonicNow();
    return this.#lanes.lanes.map((l) => ({ connection: l.name, seconds: l.delayMs(now) / 1000 }));
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
    this.#conns.forEach((nc, i) => {
      this.#subs.push(
        nc.subscribe(AUTH_SUBJECT, {
          queue,
          callback: (err, msg) => {
            if (err) {
              this.#log.error('subscription error', { error: err.message, connection: i });
              return;
            }
            // Nothing may throw into the client's read loop: it would stop reading for good.
            try {
              this.#receive(msg);
            } catch (e) {
              this.#log.error('request dropped', { error: (e as Error).message });
            }
          },
        }),
      );
    });
    await Promise.all(this.#conns.map((nc) => nc.flush()));
    this.#conns.forEach((nc, i) => void this.#watchConnection(nc, this.#lanes.lanes[i]!));
    this.#statsTimer = setInterval(() => this.#logStats(), 1000);
    this.#statsTimer.unref();
    this.#log.info('listening', {
      subject: AUTH_SUBJECT,
      queue,
      connections: this.#conns.length,
      servers: this.#conns[0]!.getServer(),
      issuer: this.#service.issuerPublicKey,
    });
  }

  #receive(msg: Msg): void {
    const service = this.#service;
    const receivedMs = service.monotonicNow();
    let xkey: string | undefined;
    try {
      xkey = msg.headers?.get('Nats-Server-Xkey') || undefined;
    } catch {
      // Malformed headers (nats-core throws on invalid names): decided as if there were none.
      xkey = undefined;
    }
    const admitted = service.admit(msg.data, xkey, receivedMs);
    if (!admitted) return;
    const displaced = this.#queue.push({ item: { admitted, reply: msg.reply || undefined }, receivedMs, deadlineMs: admitted.timing?.deadlineMs });
    this.#stats.received++;
    if (this.#queue.length > this.#stats.maxQueue) this.#stats.maxQueue = this.#queue.length;
    if (displaced) this.#shed(service, displaced.item, 'queue_full', 0);
    this.#schedule();
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
    while (performance.now() < end) {
      // Reading the service once per request: a reload mid-slice keeps one consistent config.
      const service = this.#service;
      const now = service.monotonicNow();
      const lane = this.#lanes.pick(now);
      // Every lane is full: hold the queue until a PING comes back (onProbed reschedules).
      // Only what can no longer be answered in time is dropped meanwhile.
      if (!lane) {
        const least = Math.min(...this.#lanes.lanes.map((l) => l.delayMs(now)));
        this.#queue.dropHopeless(now, least + this.#costMs, (e, reason) => this.#shed(service, e.item, reason, least));
        this.#checkIdle();
        return;
      }
      const laneDelay = lane.delayMs;
      const shed = (e: { item: Pending }, reason: ShedReason) => this.#shed(service, e.item, reason, laneDelay);
      const entry = this.#queue.next(now, this.#costMs + laneDelay, shed);
      if (!entry) break;
      const started = performance.now();
      this.#stats.served++;
      this.#serve(service, entry.item, laneDelay, lane.lane);
      this.#costMs = 0.9 * this.#costMs + 0.1 * (performance.now() - started);
    }
    if (this.#queue.length > 0) this.#schedule();
    else this.#checkIdle();
  }

  #shed(service: CalloutService, pending: Pending, reason: ShedReason, laneDelay: number): void {
    this.#stats[reason]++;
    service.shed(pending.admitted, reason, laneDelay);
  }

  #logStats(): void {
    const s = this.#stats;
    if (s.received === 0 && s.served === 0 && this.#queue.length === 0) return;
    const now = this.#service.monotonicNow();
    this.#log.debug('scheduler', {
      ...s,
      queued: this.#queue.length,
      oldest_wait_ms: Math.round(this.#queue.oldestWaitMs(now)),
      cost_ms: Math.round(this.#costMs * 1000) / 1000,
      lane_delay_ms: this.#lanes.lanes.map((l) => Math.round(l.delayMs(now))),
    });
    this.#stats = { received: 0, served: 0, expired: 0, too_late: 0, queue_full: 0, maxQueue: 0 };
  }

  #serve(service: CalloutService, pending: Pending, laneDelay: number, lane: ReplyLane): void {
    this.#processing++;
    service
      .process(pending.admitted, laneDelay)
      .then((reply) => {
        if (!reply || !pending.reply) return;
        // A verification that waited on the IdP may find its lane gone by now: any other will do.
        const via = lane.connected ? lane : (this.#lanes.lanes.find((l) => l.connected) ?? lane);
        via.send(pending.reply, reply);
      })
      .catch((e: unknown) => this.#log.error('reply failed', { error: (e as Error).message }))
      .finally(() => {
        this.#processing--;
        this.#checkIdle();
      });
  }

  #checkIdle(): void {
    if (this.#processing === 0 && this.#queue.length === 0) this.#idle?.();
  }

  /** Why this runner cannot answer requests now (readiness); empty when it can. */
  problems(): string[] {
    if (this.#stopping) return ['stopping'];
    if (this.#subs.length === 0 || this.#subs.some((s) => s.isClosed())) return ['not subscribed to $SYS.REQ.USER.AUTH'];
    const problems: string[] = [];
    this.#conns.forEach((nc, i) => {
      const which = this.#conns.length > 1 ? `NATS connection ${i}` : 'NATS connection';
      if (nc.isClosed()) problems.push(`${which} closed`);
      else if (!this.#lanes.lanes[i]!.connected) problems.push(`${which} disconnected, reconnecting`);
    });
    return problems;
  }

  async #watchConnection(nc: NatsConnection, lane: ReplyLane): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        lane.setConnected(false);
        this.#log.warn('NATS disconnected', { server: s.server, connection: lane.name });
      } else if (s.type === 'reconnect') {
        lane.setConnected(true);
        this.#log.info('NATS reconnected', { server: s.server, connection: lane.name });
      }
    }
  }

  /** Replaces the service (a reloaded configuration); requests being processed finish on the old one. */
  swap(service: CalloutService): void {
    this.#service = service;
  }

  /** Resolves when any connection is closed for good (the process should then exit). */
  closed(): Promise<void> {
    return Promise.race(this.#conns.map((nc) => nc.closed().then(() => undefined)));
  }

  /** Drains: no new requests, answers the ones received, then closes the connections. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#statsTimer);
    await Promise.all(this.#subs.map((s) => s.drain().catch(() => undefined)));
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    await Promise.all(this.#conns.map((nc) => nc.drain().catch(() => undefined)));
  }
}
