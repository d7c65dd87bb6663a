import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { CRYPTO_BACKEND } from './crypto-backend.js';
import type { AuditDropReason } from './audit/buffer.js';
import type { DecisionRecord } from './audit/event.js';
import { SHED_REASONS } from './request-queue.js';

/** Where a service reports what it decided; the process keeps one across reloads. */
export interface DecisionObserver {
  /** `seconds`: from receiving the request to having its answer; undefined when none was made (shed). */
  decided(result: 'allow' | 'reject' | 'abort', code: string | undefined, cached: boolean | undefined, seconds: number | undefined): void;
  jwksFetched(issuer: string, ok: boolean): void;
  /** A request dropped unanswered because its answer could not arrive in time. */
  shed(reason: string): void;
  /** A server's request stamps jumped back and stayed so: its clock offset is relearnt. */
  clockStepped?(): void;
  /** Every decision with its request's facts, as logged (audit events). */
  recorded?(record: DecisionRecord): void;
}

/** One observer that tells each of `list` in turn. */
export function allOf(...list: readonly DecisionObserver[]): DecisionObserver {
  return {
    decided: (...args) => {
      for (const o of list) o.decided(...args);
    },
    jwksFetched: (...args) => {
      for (const o of list) o.jwksFetched(...args);
    },
    shed: (...args) => {
      for (const o of list) o.shed(...args);
    },
    clockStepped: () => {
      for (const o of list) o.clockStepped?.();
    },
    recorded: (record) => {
      for (const o of list) o.recorded?.(record);
    },
  };
}

/** Read at scrape time: state owned elsewhere (the running service, the runner). */
export interface MetricsSources {
  inFlight(): number;
  queueLength(): number;
  /** Per NATS connection of the service: how far behind the server's processing of our answers is. */
  replyLaneDelays(): readonly { connection: string; seconds: number }[];
  cacheEntries(): number;
  issuersKeysLoaded(): readonly { issuer: string; loaded: boolean }[];
}

/**
 * The service's Prometheus metrics. Counters live as long as the process, so a reload does not
 * reset them; gauges are read from the current service when scraped.
 */
export class Metrics implements DecisionObserver {
  readonly registry = new Registry();
  readonly #requests: Counter<'result' | 'code'>;
  readonly #duration: Histogram<'result'>;
  readonly #cache: Counter<'result'>;
  readonly #jwks: Counter<'issuer' | 'result'>;
  readonly #reloads: Counter<'result'>;
  readonly #shed: Counter<'reason'>;
  readonly #clockSteps: Counter;
  readonly #auditSent: Counter;
  readonly #auditDropped: Counter<'reason'>;
  #sources: MetricsSources | undefined;

  constructor(version: string) {
    const registers = [this.registry];
    this.#requests = new Counter({
      name: 'oidc_callout_requests_total',
      help: 'Authorization requests by result (allow, reject, abort) and failure code',
      labelNames: ['result', 'code'],
      registers,
    });
    this.#duration = new Histogram({
      name: 'oidc_callout_request_duration_seconds',
      help: 'Time from receiving a request to having its answer, by result',
      labelNames: ['result'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2],
      registers,
    });
    this.#cache = new Counter({
      name: 'oidc_callout_allowed_from_cache_total',
      help: 'Allowed requests answered from the verified-decision cache (hit) or after verifying the token (miss)',
      labelNames: ['result'],
      registers,
    });
    this.#jwks = new Counter({
      name: 'oidc_callout_jwks_fetches_total',
      help: 'JWKS fetches by issuer and result (ok, error)',
      labelNames: ['issuer', 'result'],
      registers,
    });
    this.#reloads = new Counter({
      name: 'oidc_callout_config_reloads_total',
      help: 'Configuration reloads by result (ok, error)',
      labelNames: ['result'],
      // Each worker reloads: the replica reloaded once.
      aggregator: 'max',
      registers,
    });
    this.#shed = new Counter({
      name: 'oidc_callout_shed_total',
      help: 'Requests dropped unanswered, by reason (expired, too_late, queue_full): the server would have given up before the answer arrived',
      labelNames: ['reason'],
      registers,
    });
    this.#clockSteps = new Counter({
      name: 'oidc_callout_clock_steps_total',
      help: "Times a server's request stamps jumped back and stayed so (its clock stepped, or a backlog within nats-server grew by seconds): its offset was relearnt",
      registers,
    });
    // Every reason from the start, at 0: a dashboard's rate() then reads 0, not "no data".
    for (const reason of SHED_REASONS) this.#shed.inc({ reason }, 0);
    this.#auditSent = new Counter({
      name: 'oidc_callout_audit_sent_total',
      help: 'Audit events handed to nats-server',
      registers,
    });
    this.#auditDropped = new Counter({
      name: 'oidc_callout_audit_dropped_total',
      help: 'Audit events lost, by reason (buffer_full, permission_denied, publish_failed)',
      labelNames: ['reason'],
      registers,
    });
    const sources = () => this.#sources;
    new Gauge({
      name: 'oidc_callout_queue_length',
      help: 'Requests received and waiting to be served',
      registers,
      collect() {
        this.set(sources()?.queueLength() ?? 0);
      },
    });
    new Gauge({
      name: 'oidc_callout_reply_lane_delay_seconds',
      aggregator: 'max',
      help: "How far behind nats-server is in processing the answers sent on each of the service's connections (PING round trip)",
      labelNames: ['connection'],
      registers,
      collect() {
        this.reset();
        for (const { connection, seconds } of sources()?.replyLaneDelays() ?? []) this.set({ connection }, Number.isFinite(seconds) ? seconds : -1);
      },
    });
    new Gauge({
      name: 'oidc_callout_in_flight_requests',
      help: 'Requests received and not answered yet (queued or being processed)',
      registers,
      collect() {
        this.set(sources()?.inFlight() ?? 0);
      },
    });
    new Gauge({
      name: 'oidc_callout_cache_entries',
      help: 'Entries in the verified-decision cache',
      registers,
      collect() {
        this.set(sources()?.cacheEntries() ?? 0);
      },
    });
    new Gauge({
      name: 'oidc_callout_issuer_keys_loaded',
      // Loaded for the replica when loaded in every worker.
      aggregator: 'min',
      help: "1 when the issuer's signing keys are loaded",
      labelNames: ['issuer'],
      registers,
      collect() {
        this.reset();
        for (const { issuer, loaded } of sources()?.issuersKeysLoaded() ?? []) this.set({ issuer }, loaded ? 1 : 0);
      },
    });
    new Gauge({
      name: 'oidc_callout_crypto_info',
      help: 'Where the Ed25519 and xkey work runs: libsodium, or the node:crypto/tweetnacl fallback',
      labelNames: ['backend'],
      aggregator: 'first',
      registers,
    }).set({ backend: CRYPTO_BACKEND }, 1);
    new Gauge({ name: 'oidc_callout_build_info', help: 'Version of the running service', labelNames: ['version', 'node'], aggregator: 'first', registers }).set(
      { version, node: process.version },
      1,
    );
  }

  /** Connects the gauges to the running state. */
  attach(sources: MetricsSources): void {
    this.#sources = sources;
  }

  decided(result: 'allow' | 'reject' | 'abort', code: string | undefined, cached: boolean | undefined, seconds: number | undefined): void {
    this.#requests.inc({ result, code: code ?? '' });
    if (seconds !== undefined) this.#duration.observe({ result }, seconds);
    if (cached !== undefined) this.#cache.inc({ result: cached ? 'hit' : 'miss' });
  }

  jwksFetched(issuer: string, ok: boolean): void {
    this.#jwks.inc({ issuer, result: ok ? 'ok' : 'error' });
  }

  shed(reason: string): void {
    this.#shed.inc({ reason });
  }

  clockStepped(): void {
    this.#clockSteps.inc();
  }

  auditSent(n: number): void {
    this.#auditSent.inc(n);
  }

  auditDropped(reason: AuditDropReason, n: number): void {
    this.#auditDropped.inc({ reason }, n);
  }

  reloaded(ok: boolean): void {
    this.#reloads.inc({ result: ok ? 'ok' : 'error' });
  }
}
