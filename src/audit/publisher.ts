import { errors as natsErrors, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../log.js';
import type { DecisionObserver } from '../metrics.js';
import { isPublicKey } from '../nkey.js';
import { within } from '../within.js';
import { AuditBuffer, type AuditDropReason } from './buffer.js';
import { type AuditEvent, buildAuditEvent, type DecisionRecord } from './event.js';
import type { AuditSubject } from './subject.js';

/** What the publisher counts (Metrics implements it). */
export interface AuditCounters {
  auditSent(n: number): void;
  auditDropped(reason: AuditDropReason, n: number): void;
}

/** The `audit` section, compiled. */
export interface AuditSettings {
  readonly subject: AuditSubject;
  readonly bufferEvents: number;
  readonly bufferBytes: number;
}

/** Where the client's source port and accept time come from: nats-server's CONNZ, by connection id. */
export type ConnectionLookup = (serverId: string, clientId: number) => Promise<{ port: number; start: string | null } | undefined>;

/** Events sent before waiting for nats-server to confirm them (a PING round trip). */
const BATCH = 256;
/** CONNZ requests in flight at once, how long one may take, and how long a batch waits for them. */
const LOOKUP_CONCURRENCY = 16;
const LOOKUP_TIMEOUT_MS = 1000;
const LOOKUP_BATCH_MS = 1000;
const ENCODER = new TextEncoder();

/**
 * Publishes one audit event per decision on its own NATS connection (the service's user), never
 * in the way of an authorization: `record` only builds the event and queues it in a bounded
 * buffer; a background loop sends batches while the connection is up, each confirmed by a PING
 * before the next, so a slow server holds at most one batch in the client. What does not fit is
 * dropped and counted by reason. nats-server refuses a publish the user may not make with an
 * asynchronous `-ERR 'Permissions Violation for Publish to ...'`, which the client reports as a
 * status event: the first is logged as an error naming the subject, every one is counted.
 */
export class AuditPublisher implements DecisionObserver {
  readonly #settings: AuditSettings;
  readonly #replica: string;
  readonly #log: Logger;
  readonly #counters: AuditCounters | undefined;
  readonly #buffer: AuditBuffer<AuditEvent>;
  #nc: NatsConnection | undefined;
  #lookup: ConnectionLookup | undefined;
  #connected = false;
  #pumping: Promise<void> | undefined;
  #refusedLogged = false;
  #failedLogged = false;
  #droppedLogged = false;

  constructor(settings: AuditSettings, replica: string, log: Logger, counters?: AuditCounters) {
    this.#settings = settings;
    this.#replica = replica;
    this.#log = log;
    this.#counters = counters;
    this.#buffer = new AuditBuffer(settings.bufferEvents, settings.bufferBytes);
  }

  /** Events waiting to be sent. */
  get buffered(): number {
    return this.#buffer.length;
  }

  decided(): void {}
  jwksFetched(): void {}
  shed(): void {}

  /** Queues the event of one decision. Never throws, never waits. */
  recorded(record: DecisionRecord): void {
    try {
      const event = buildAuditEvent(record, this.#replica);
      // The lookup adds a number and a timestamp at most: the size taken now is close enough.
      // Bytes as published (UTF-8): client-chosen text in CJK takes three per character.
      if (!this.#buffer.push(event, Buffer.byteLength(JSON.stringify(event), 'utf8') + 64)) {
        this.#dropped('buffer_full', 1);
        if (!this.#droppedLogged) {
          this.#droppedLogged = true;
          this.#log.warn('audit buffer full: events are dropped until NATS takes them again', {
            buffered: this.#buffer.length,
            buffered_bytes: this.#buffer.bytes,
          });
        }
        return;
      }
      this.#pump();
    } catch (err) {
      this.#dropped('publish_failed', 1);
      this.#log.error('audit event not built', { error: (err as Error).message });
    }
  }

  /**
   * Starts publishing on `nc` (what was recorded before waits in the buffer). With `lookup`
   * (a system account login), each event gets the client's source port and accept time.
   */
  attach(nc: NatsConnection, lookup?: ConnectionLookup): void {
    this.#nc = nc;
    this.#lookup = lookup;
    this.#connected = !nc.isClosed();
    void this.#watch(nc);
    this.#pump();
  }

  /** Sends what is buffered, for at most `timeoutMs` (stop). */
  async drain(timeoutMs: number): Promise<void> {
    this.#pump();
    await within(this.#pumping ?? Promise.resolve(), timeoutMs);
  }

  #dropped(reason: AuditDropReason, n: number): void {
    this.#counters?.auditDropped(reason, n);
  }

  async #watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        this.#connected = false;
      } else if (s.type === 'reconnect') {
        this.#connected = true;
        this.#pump();
      } else if (s.type === 'error' && s.error instanceof natsErrors.PermissionViolationError && s.error.operation === 'publish') {
        if (!this.#settings.subject.matches(s.error.subject)) continue;
        this.#dropped('permission_denied', 1);
        if (!this.#refusedLogged) {
          this.#refusedLogged = true;
          this.#log.error('audit events refused by nats-server: the service user may not publish on the audit subject', {
            subject: s.error.subject,
            needs: `publish permission on ${this.#settings.subject.pattern} for the service's user`,
            server_error: s.error.message,
            dropped_metric: 'oidc_callout_audit_dropped_total{reason="permission_denied"}',
          });
        }
      }
    }
  }

  #pump(): void {
    if (this.#pumping || !this.#nc || !this.#connected || this.#buffer.length === 0) return;
    const nc = this.#nc;
    // After the current turn: the decision that queued the event is answered first.
    this.#pumping = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.#send(nc))
      .catch((err: unknown) => this.#log.error('audit publishing stopped', { error: (err as Error).message }))
      .finally(() => {
        this.#pumping = undefined;
        if (this.#buffer.length > 0 && this.#connected && !nc.isClosed()) this.#pump();
      });
  }

  async #send(nc: NatsConnection): Promise<void> {
    while (this.#connected && this.#buffer.length > 0) {
      if (nc.isClosed()) {
        const n = this.#buffer.take(Number.POSITIVE_INFINITY).length;
        this.#dropped('publish_failed', n);
        return;
      }
      const batch = this.#buffer.take(BATCH);
      if (this.#lookup) await this.#addPorts(batch, this.#lookup);
      let sent = 0;
      for (const event of batch) {
        try {
          nc.publish(this.#settings.subject.render(event), ENCODER.encode(JSON.stringify(event)));
          sent++;
        } catch (err) {
          this.#dropped('publish_failed', 1);
          if (!this.#failedLogged) {
            this.#failedLogged = true;
            this.#log.error('audit event not published', { error: (err as Error).message });
          }
        }
      }
      this.#counters?.auditSent(sent);
      // The PONG comes back once nats-server has processed every message before it (and sent any
      // -ERR for them): at most one batch is ever waiting in the client.
      await nc.flush().catch(() => undefined);
      if (this.#droppedLogged && this.#buffer.length === 0) this.#droppedLogged = false;
    }
  }

  async #addPorts(batch: AuditEvent[], lookup: ConnectionLookup): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < batch.length) {
        const event = batch[next++]!;
        if (event.client_id === null || event.server_id === null || !isPublicKey(event.server_id, 'server')) continue;
        try {
          const found = await lookup(event.server_id, event.client_id);
          if (found) {
            event.client_port = found.port;
            event.client_start = found.start;
          }
        } catch {
          // No port is better than no event.
        }
      }
    };
    // A slow or unreachable system account costs a batch its ports, never more than this wait.
    await within(Promise.all(Array.from({ length: Math.min(LOOKUP_CONCURRENCY, batch.length) }, worker)), LOOKUP_BATCH_MS);
    next = batch.length;
  }
}

/**
 * Looks a connection up in nats-server's CONNZ (`$SYS.REQ.SERVER.<id>.CONNZ`, a system account
 * login): open connections first (allowed, or still waiting for their answer), then the closed
 * ones nats-server remembers (refused clients are closed at once). The authorization request
 * itself carries the client's address but not its port (nats-server 2.10 and 2.15).
 */
export function connzLookup(system: NatsConnection, timeoutMs = LOOKUP_TIMEOUT_MS): ConnectionLookup {
  const ask = async (serverId: string, cid: number, state: number) => {
    const reply = await system.request(`$SYS.REQ.SERVER.${serverId}.CONNZ`, JSON.stringify({ cid, state }), { timeout: timeoutMs });
    const body = reply.json<{ data?: { connections?: { cid?: unknown; port?: unknown; start?: unknown }[] } }>();
    const c = body.data?.connections?.find((x) => x.cid === cid);
    if (!c || typeof c.port !== 'number') return undefined;
    const start = typeof c.start === 'string' ? new Date(c.start) : undefined;
    return { port: c.port, start: start && Number.isFinite(start.getTime()) ? start.toISOString() : null };
  };
  // 0 open, 1 closed; a refused client can fall between the two while it is being closed.
  return async (serverId, cid) => (await ask(serverId, cid, 0)) ?? (await ask(serverId, cid, 1)) ?? (await ask(serverId, cid, 0));
}
