import { hostname } from 'node:os';
import type { NatsConnection } from '@nats-io/transport-node';
import { inspectCalloutAccount } from './account-check.js';
import { AdminListener } from './admin.js';
import { AuditPublisher, connzLookup } from './audit/publisher.js';
import { type Config, loadConfig, redactedConfig } from './config.js';
import type { IssuerKeys } from './issuers.js';
import { createLogger, type Logger } from './log.js';
import { LatencyWatch } from './latency-watch.js';
import { allOf, type DecisionObserver, Metrics } from './metrics.js';
import { startMonitoring } from './monitoring.js';
import { connectAll, connectAs, withoutCredentials } from './nats-connection.js';
import { CalloutRunner } from './runner.js';
import { logSentinelSupport } from './sentinel-support.js';
import { CalloutService } from './service.js';

/**
 * The run lifecycle, in one place: load, warm the issuers' keys, connect (waiting for NATS),
 * serve, report readiness, reload on SIGHUP, drain on SIGTERM. The command line only calls it.
 */

export function buildService(config: Config, log: Logger, observer?: DecisionObserver, previous?: CalloutService): CalloutService {
  return new CalloutService(config, log, { observer, previous });
}

/** Loads issuers' keys, bounded by their HTTP timeouts; failures are logged, not fatal. */
async function warmIssuers(issuers: readonly IssuerKeys[], log: Logger): Promise<void> {
  await Promise.all(
    issuers.map((i) =>
      i.load().catch((e: Error) => log.warn('issuer keys not loaded; retried when a token needs them', { issuer: i.config.issuer, error: e.message })),
    ),
  );
}

/**
 * Connects the service's connections, waiting for NATS when it is not up yet (the service may
 * start before nats-server), and saying so in the log with the reason (refused, wrong password).
 */
async function connectWhenUp(config: Config, log: Logger): Promise<NatsConnection[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await connectAll(config);
    } catch (err) {
      if (attempt <= 3 || attempt % 20 === 0) {
        log.warn('NATS not reachable yet; retrying', { servers: config.nats.servers.map(withoutCredentials), error: (err as Error).message, attempt });
      }
      await new Promise((r) => setTimeout(r, Math.min(2000, 250 * attempt)));
    }
  }
}

/** Top-level keys a reload cannot apply to a running process. */
const RESTART_ONLY = ['nats', 'http', 'log', 'audit'] as const;

/** Runs the service from configuration file `file` until a signal or the loss of NATS; the exit code. */
export async function runService(file: string, version: string): Promise<number> {
  // Until the service is up, a SIGHUP (systemctl reload) must not kill it: remember it instead.
  let reloadPending = false;
  const early = () => (reloadPending = true);
  process.on('SIGHUP', early);

  let config = loadConfig(file);
  const log = createLogger(config.log.level);
  log.info('starting', { version, node: process.version, config: file, mode: config.callout.mode });
  const metrics = new Metrics(version);
  // Readiness watches how fast decisions are, not only whether the service is connected.
  const latency = config.http ? new LatencyWatch(config.http.readyMaxLatencyMs / 1000, () => performance.now()) : undefined;
  // Audit events: recorded from the first decision on, published once their connection is up.
  const audit = config.audit && new AuditPublisher(config.audit, `${config.nats.name}@${hostname()}#${process.pid}`, log, metrics);
  const observers = [metrics, ...(latency ? [latency] : []), ...(audit ? [audit] : [])];
  const observer = observers.length > 1 ? allOf(...observers) : metrics;
  let service = buildService(config, log, observer);
  await warmIssuers(service.issuers, log);
  const connections = await connectWhenUp(config, log);
  const runner = new CalloutRunner(connections, service, log);
  await runner.start();
  // Operator mode: say whether clients may come with their token alone (default_sentinel).
  if (config.callout.mode === 'operator') logSentinelSupport(log, connections[0]!);
  metrics.attach(runner.metricsSources());
  // Revocation: every replica listens (outside the queue group) on the first connection.
  // A system login that fails must not take authentication down: revocation then only refuses
  // new logins, and says so.
  let system: NatsConnection | undefined;
  if (config.admin?.system) {
    try {
      system = await connectAs(config, config.admin.system, { name: `${config.nats.name} (system)` });
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
      auditConnection = await connectAs(config, config.nats, { name: `${config.nats.name} (audit)` });
      // Client ports cost one CONNZ request per decision: only when asked for.
      audit.attach(auditConnection, config.audit!.clientPorts && system ? connzLookup(system) : undefined);
    } catch (err) {
      log.error('audit connection failed: audit events are dropped until a restart', { error: (err as Error).message });
    }
  }
  // Revocation is on when admin keys are listed (admin.system alone serves checks and audit).
  if (config.admin?.publicKeys.length) {
    await new AdminListener(connections[0]!, system, () => runner.service, log, `${config.nats.name}@${hostname()}#${process.pid}`).start();
  }
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
  const readiness = () => [
    ...runner.problems(),
    ...(latency?.problems() ?? []),
    ...runner.service
      .issuerStatus()
      .filter((s) => !s.keysLoaded)
      .map((s) => `keys of ${s.issuer} not loaded${s.lastError ? `: ${s.lastError}` : ''}`),
  ];
  const monitoring = config.http ? await startMonitoring(config.http, metrics, readiness, log) : undefined;
  const bound = monitoring?.address();
  if (bound && typeof bound === 'object') log.info('monitoring', { host: bound.address, port: bound.port, paths: ['/healthz', '/readyz', '/metrics'] });

  // Reloads run one at a time; the new service takes over only once its new issuers' keys are
  // loaded (or failed to load), so a policy edit during an IdP incident cannot lock users out.
  let reloading: Promise<void> = Promise.resolve();
  const reload = async () => {
    try {
      const next = loadConfig(file);
      const nextService = buildService(next, log, observer, service);
      const fresh = nextService.issuers.filter((i) => !service.issuers.includes(i));
      await warmIssuers(fresh, log);
      const before = redactedConfig(config) as Record<string, unknown>;
      const after = redactedConfig(next) as Record<string, unknown>;
      const ignored = RESTART_ONLY.filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]));
      if (ignored.length) log.warn('these settings changed but need a restart to apply', { keys: ignored });
      const dropped = service.issuers.filter((i) => !nextService.issuers.includes(i));
      config = next;
      service = nextService;
      runner.swap(service);
      // Requests still in flight on a dropped issuer finish; its idle connections go.
      for (const i of dropped) void i.close();
      metrics.reloaded(true);
      log.info('configuration reloaded', {
        issuers: config.issuers.length,
        rules: config.policy.ruleNames.length,
        issuers_kept: config.issuers.length - fresh.length,
      });
    } catch (err) {
      // A bad new configuration keeps the running one.
      metrics.reloaded(false);
      log.error('reload failed; keeping the running configuration', { error: (err as Error).message });
    }
  };
  const requestReload = () => {
    reloading = reloading.then(reload);
  };
  process.off('SIGHUP', early);
  process.on('SIGHUP', requestReload);
  if (reloadPending) requestReload();

  const reason = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
    void runner.closed().then(() => resolve('connection closed'));
  });
  log.info('stopping', { signal: reason, in_flight: runner.inFlight });
  await runner.stop();
  await audit?.drain(2000);
  await auditConnection?.drain().catch(() => undefined);
  await system?.close().catch(() => undefined);
  monitoring?.close();
  // Losing NATS for good is a failure: let the supervisor (Restart=on-failure) bring us back.
  return reason === 'connection closed' ? 1 : 0;
}
