/**
 * One serving instance: the service, its NATS connections and runner, the admin listener, audit
 * publishing and the latency watch, with reload and drain. A replica runs one in its main thread
 * (`workers: 1`) or one per worker thread; the run lifecycle (lifecycle.ts) drives them.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { connectionLimitFindings, inspectCalloutAccount, readAccountJwt } from './account-check.js';
import { AdminListener, type AppliedRevocation, applyRevocation, type RevokeTarget } from './admin.js';
import type { ReplayGuard } from './admin-request.js';
import { AuditPublisher, connzLookup } from './audit/publisher.js';
import type { Config } from './config.js';
import type { IssuerKeys } from './issuers.js';
import { LatencyWatch } from './latency-watch.js';
import type { Logger } from './log.js';
import { allOf, type DecisionObserver, type Metrics } from './metrics.js';
import { connectAll, connectAs, withoutCredentials } from './nats-connection.js';
import { CalloutRunner } from './runner.js';
import { logSentinelSupport } from './sentinel-support.js';
import { CalloutService } from './service.js';

export interface InstanceOptions {
  /** Names this instance in admin answers and audit events. */
  readonly replica: string;
  /** Once per replica: the startup check of the callout account, the sentinel line. */
  readonly primary: boolean;
  /** NATS connections of this instance (default `nats.connections`). */
  readonly connections?: number;
  /** Its connections' name (default `nats.name`): workers add their index. */
  readonly connectionName?: string;
  /**
   * A worker of a replica (workers > 1): its other workers, for a revocation this one received;
   * the replica's replay guard; the queue group that hands each admin request to one worker.
   */
  readonly workers?: {
    readonly peers: (target: RevokeTarget) => Promise<AppliedRevocation[]>;
    readonly replays: ReplayGuard;
    readonly queue: string;
  };
  /** Names this instance's reply lanes in metrics (workers: `w1/3`), so lanes of workers never clash. */
  readonly laneLabel?: (connection: string) => string;
  /** Revocations to hold before serving (a worker started again after the replica applied them). */
  readonly revocations?: readonly RevokeTarget[];
}

export function buildService(config: Config, log: Logger, observer?: DecisionObserver, previous?: CalloutService): CalloutService {
  return new CalloutService(config, log, { observer, previous });
}

/** Loads issuers' keys, bounded by their HTTP timeouts; failures are logged, not fatal. */
export async function warmIssuers(issuers: readonly IssuerKeys[], log: Logger): Promise<void> {
  await Promise.all(
    issuers.map((i) =>
      i.load().catch((e: Error) => log.warn('issuer keys not loaded; retried when a token needs them', { issuer: i.config.issuer, error: e.message })),
    ),
  );
}

/**
 * With `callout.account_jwt` configured, its connection limit is checked before connecting: past
 * it the connections below would be retried for ever (the full check runs once they are up).
 */
export function logConnectionLimit(config: Config, log: Logger): void {
  if (config.callout.mode !== 'operator' || config.callout.accountJwt === undefined) return;
  try {
    const claims = readAccountJwt(config.callout.accountJwt, config.keys.accounts.calloutAccount);
    if (typeof claims === 'string') return;
    for (const problem of connectionLimitFindings(config, claims).problems)
      log.error('callout account misconfigured', { problem, checked_from: 'callout.account_jwt' });
  } catch (err) {
    // Never fatal, like the full check: the servers decide.
    log.warn('callout account not checked', { error: (err as Error).message });
  }
}

/**
 * Connects the service's connections, waiting for NATS when it is not up yet (the service may
 * start before nats-server), and saying so in the log with the reason (refused, wrong password).
 */
async function connectWhenUp(config: Config, log: Logger, count: number, name: string): Promise<NatsConnection[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await connectAll(config, {}, count, name);
    } catch (err) {
      if (attempt <= 3 || attempt % 20 === 0) {
        log.warn('NATS not reachable yet; retrying', { servers: config.nats.servers.map(withoutCredentials), error: (err as Error).message, attempt });
      }
      await new Promise((r) => setTimeout(r, Math.min(2000, 250 * attempt)));
    }
  }
}

export class ServiceInstance {
  readonly #log: Logger;
  readonly #observer: DecisionObserver;
  readonly #latency: LatencyWatch | undefined;
  readonly #runner: CalloutRunner;
  readonly #audit: AuditPublisher | undefined;
  readonly #auditConnection: NatsConnection | undefined;
  readonly #system: NatsConnection | undefined;
  #service: CalloutService;

  private constructor(parts: {
    log: Logger;
    observer: DecisionObserver;
    latency: LatencyWatch | undefined;
    runner: CalloutRunner;
    audit: AuditPublisher | undefined;
    auditConnection: NatsConnection | undefined;
    system: NatsConnection | undefined;
    service: CalloutService;
  }) {
    this.#log = parts.log;
    this.#observer = parts.observer;
    this.#latency = parts.latency;
    this.#runner = parts.runner;
    this.#audit = parts.audit;
    this.#auditConnection = parts.auditConnection;
    this.#system = parts.system;
    this.#service = parts.service;
  }

  /** Warms the issuers' keys, connects (waiting for NATS) and serves. */
  static async start(config: Config, log: Logger, metrics: Metrics, opts: InstanceOptions): Promise<ServiceInstance> {
    // Readiness watches how fast decisions are, not only whether the service is connected.
    const latency = config.http ? new LatencyWatch(config.http.readyMaxLatencyMs / 1000, () => performance.now()) : undefined;
    // Audit events: recorded from the first decision on, published once their connection is up.
    const audit = config.audit && new AuditPublisher(config.audit, opts.replica, log, metrics);
    const observers = [metrics, ...(latency ? [latency] : []), ...(audit ? [audit] : [])];
    const observer = observers.length > 1 ? allOf(...observers) : metrics;
    const service = buildService(config, log, observer);
    for (const r of opts.revocations ?? []) service.revocations.revoke(r.issuer, r.subject, r.at);
    await warmIssuers(service.issuers, log);
    const name = opts.connectionName ?? config.nats.name;
    if (opts.primary) logConnectionLimit(config, log);
    const connections = await connectWhenUp(config, log, opts.connections ?? config.nats.connections, name);
    const runner = new CalloutRunner(connections, service, log);
    await runner.start();
    const sources = runner.metricsSources();
    const label = opts.laneLabel;
    metrics.attach(label ? { ...sources, replyLaneDelays: () => sources.replyLaneDelays().map((l) => ({ ...l, connection: label(l.connection) })) } : sources);
    // Operator mode: say whether clients may come with their token alone (default_sentinel).
    if (opts.primary && config.callout.mode === 'operator') logSentinelSupport(log, connections[0]!);
    // A system login that fails must not take authentication down: revocation then only refuses
    // new logins, and says so.
    let system: NatsConnection | undefined;
    if (config.admin?.system) {
      try {
        system = await connectAs(config, config.admin.system, { name: `${name} (system)` });
      } catch (err) {
        log.error('admin.system login failed: revocation will refuse new logins but cannot disconnect live connections', {
          servers: config.nats.servers.map(withoutCredentials),
          error: (err as Error).message,
        });
      }
    }
    // A connection of its own: audit traffic never queues behind (or in front of) the answers.
    let auditConnection: NatsConnection | undefined;
    if (audit) {
      try {
        auditConnection = await connectAs(config, config.nats, { name: `${name} (audit)` });
        // Client ports cost one CONNZ request per decision: only when asked for.
        audit.attach(auditConnection, config.audit!.clientPorts && system ? connzLookup(system) : undefined);
      } catch (err) {
        log.error('audit connection failed: audit events are dropped until a restart', { error: (err as Error).message });
      }
    }
    // Revocation is on when admin keys are listed (admin.system alone serves checks and audit).
    // Every worker listens, in a queue group of the replica's: whichever takes a request applies
    // it on every worker and answers once, so a worker starting again leaves no gap.
    if (config.admin?.publicKeys.length) {
      await new AdminListener(connections[0]!, system, () => runner.service, log, opts.replica, opts.workers).start();
    }
    if (opts.primary) {
      // Operator mode: say now what would otherwise show only as refused logins. Never fatal: the
      // account JWT may be mid-update, and the servers decide.
      void inspectCalloutAccount(config, system, Math.floor(Date.now() / 1000)).then(
        (account) => {
          if (!account) return;
          for (const problem of account.problems) log.error('callout account misconfigured', { problem, checked_from: account.source });
          for (const warning of account.warnings) log.warn('callout account', { warning, checked_from: account.source });
          if (!account.problems.length && !account.warnings.length) log.info('callout account checked', { checked_from: account.source });
        },
        (err: Error) => log.warn('callout account not checked', { error: err.message }),
      );
    }
    return new ServiceInstance({ log, observer, latency, runner, audit, auditConnection, system, service });
  }

  get service(): CalloutService {
    return this.#service;
  }

  get inFlight(): number {
    return this.#runner.inFlight;
  }

  /** What keeps this instance from answering well; empty when ready. */
  readiness(): string[] {
    return [
      ...this.#runner.problems(),
      ...(this.#latency?.problems() ?? []),
      ...this.#service
        .issuerStatus()
        .filter((s) => !s.keysLoaded)
        .map((s) => `keys of ${s.issuer} not loaded${s.lastError ? `: ${s.lastError}` : ''}`),
    ];
  }

  /**
   * Takes `next` into service once its new issuers' keys are loaded (or failed to load), so a
   * policy edit during an IdP incident cannot lock users out. Throws when `next` cannot serve.
   */
  async reload(next: Config): Promise<{ issuersKept: number }> {
    const previous = this.#service;
    const nextService = buildService(next, this.#log, this.#observer, previous);
    const fresh = nextService.issuers.filter((i) => !previous.issuers.includes(i));
    await warmIssuers(fresh, this.#log);
    const dropped = previous.issuers.filter((i) => !nextService.issuers.includes(i));
    this.#service = nextService;
    this.#runner.swap(nextService);
    // Requests still in flight on a dropped issuer finish; its idle connections go.
    for (const i of dropped) void i.close();
    return { issuersKept: next.issuers.length - fresh.length };
  }

  /** A revocation another worker of the replica verified: applied to this instance's cache and live users. */
  applyRevocation(target: RevokeTarget): Promise<AppliedRevocation> {
    return applyRevocation(this.#service, this.#system, target);
  }

  /** Resolves when this instance's NATS connections are closed for good. */
  closed(): Promise<void> {
    return this.#runner.closed();
  }

  /** Drains: requests in flight are answered, audit events sent (2 s at most), connections closed. */
  async stop(): Promise<void> {
    await this.#runner.stop();
    await this.#audit?.drain(2000);
    await this.#auditConnection?.drain().catch(() => undefined);
    await this.#system?.close().catch(() => undefined);
  }
}
