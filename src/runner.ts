import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from './log.js';
import type { CalloutService } from './service.js';

/** The subject nats-server publishes authorization requests on. */
export const AUTH_SUBJECT = '$SYS.REQ.USER.AUTH';

/**
 * Serves a CalloutService on a NATS connection: one queue-group subscription shared by all
 * replicas, bounded in-flight work (beyond the bound, requests are rejected at once instead of
 * queueing past the server's timeout), atomic service swaps on reload, and a drain on stop so
 * requests already received are still answered.
 */
export class CalloutRunner {
  readonly #nc: NatsConnection;
  readonly #log: Logger;
  #service: CalloutService;
  #sub: Subscription | undefined;
  #inFlight = 0;
  #idle: (() => void) | undefined;
  #connected = true;
  #stopping = false;

  constructor(nc: NatsConnection, service: CalloutService, log: Logger) {
    this.#nc = nc;
    this.#service = service;
    this.#log = log;
  }

  get service(): CalloutService {
    return this.#service;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Subscribes and waits until the server has registered the subscription. */
  async start(): Promise<void> {
    const queue = this.#service.config.nats.queueGroup;
    this.#sub = this.#nc.subscribe(AUTH_SUBJECT, {
      queue,
      callback: (err, msg) => {
        if (err) {
          this.#log.error('subscription error', { error: err.message });
          return;
        }
        // Nothing may throw into the client's read loop: it would stop reading for good.
        try {
          this.#serve(msg);
        } catch (e) {
          this.#log.error('request dropped', { error: (e as Error).message });
        }
      },
    });
    await this.#nc.flush();
    void this.#watchConnection();
    this.#log.info('listening', { subject: AUTH_SUBJECT, queue, servers: this.#nc.getServer(), issuer: this.#service.issuerPublicKey });
  }

  #serve(msg: Msg): void {
    let xkey: string | undefined;
    try {
      xkey = msg.headers?.get('Nats-Server-Xkey') || undefined;
    } catch {
      // Malformed headers (nats-core throws on invalid names): decided as if there were none.
      xkey = undefined;
    }
    // Reading the service once per message: a reload mid-request keeps one consistent config.
    const service = this.#service;
    this.#inFlight++;
    service
      .handle(msg.data, xkey)
      .then((reply) => {
        if (reply) msg.respond(reply);
      })
      .catch((e: unknown) => this.#log.error('reply failed', { error: (e as Error).message }))
      .finally(() => {
        this.#inFlight--;
        if (this.#inFlight === 0) this.#idle?.();
      });
  }

  /** Why this runner cannot answer requests now (readiness); empty when it can. */
  problems(): string[] {
    if (this.#stopping) return ['stopping'];
    if (!this.#sub || this.#sub.isClosed()) return ['not subscribed to $SYS.REQ.USER.AUTH'];
    if (this.#nc.isClosed()) return ['NATS connection closed'];
    return this.#connected ? [] : ['NATS disconnected, reconnecting'];
  }

  async #watchConnection(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type === 'disconnect') {
        this.#connected = false;
        this.#log.warn('NATS disconnected', { server: s.server });
      } else if (s.type === 'reconnect') {
        this.#connected = true;
        this.#log.info('NATS reconnected', { server: s.server });
      }
    }
  }

  /** Replaces the service (a reloaded configuration); in-flight requests finish on the old one. */
  swap(service: CalloutService): void {
    this.#service = service;
  }

  /** Drains: no new requests, answers the ones received, then closes the connection. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#sub?.drain().catch(() => undefined);
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    await this.#nc.drain().catch(() => undefined);
  }
}
