import { hostname } from 'node:os';
import { type Config, loadConfig, redactedConfig } from './config.js';
import { CRYPTO_BACKEND, CRYPTO_FALLBACK_REASON } from './crypto-backend.js';
import { createLogger, type Logger } from './log.js';
import { Metrics } from './metrics.js';
import { type MetricsText, type ReadinessCheck, startMonitoring } from './monitoring.js';
import { ServiceInstance } from './service-instance.js';
import { WorkerPool } from './worker-pool.js';

/**
 * The run lifecycle, in one place: load, start the replica (one instance in this thread, or
 * `workers` worker threads), report readiness and metrics, reload on SIGHUP, drain on SIGTERM.
 * The command line only calls it.
 */

export { buildService } from './service-instance.js';

/** Top-level keys a reload cannot apply to a running process. */
const RESTART_ONLY = ['nats', 'http', 'log', 'audit', 'workers'] as const;

/** What the lifecycle drives: one instance, or a pool of workers each running one. */
interface Replica {
  readonly readiness: ReadinessCheck;
  readonly metrics: MetricsText;
  /** Reloads from the file: the errors of what kept its configuration, and how many issuers kept their keys. */
  reload(next: Config): Promise<{ readonly errors: string[]; readonly issuersKept?: number }>;
  /** Resolves when the replica can no longer serve (NATS closed for good). */
  closed(): Promise<void>;
  inFlight(): number | undefined;
  stop(): Promise<void>;
}

async function singleReplica(config: Config, log: Logger, version: string, replica: string): Promise<Replica> {
  const metrics = new Metrics(version);
  const instance = await ServiceInstance.start(config, log, metrics, { replica, primary: true });
  return {
    readiness: () => instance.readiness(),
    metrics: async () => ({ text: await metrics.registry.metrics(), contentType: metrics.registry.contentType }),
    async reload(next) {
      try {
        const { issuersKept } = await instance.reload(next);
        metrics.reloaded(true);
        return { errors: [], issuersKept };
      } catch (err) {
        metrics.reloaded(false);
        return { errors: [(err as Error).message] };
      }
    },
    closed: () => instance.closed(),
    inFlight: () => instance.inFlight,
    stop: () => instance.stop(),
  };
}

async function pooledReplica(file: string, config: Config, log: Logger, version: string, replica: string): Promise<Replica> {
  const pool = await WorkerPool.start({ file, version, count: config.workers, connections: config.nats.connections, replica }, log);
  return {
    readiness: () => pool.readiness(),
    metrics: () => pool.metrics(),
    reload: () => pool.reload(),
    // A worker whose NATS connections close is started again: the replica itself goes on.
    closed: () => new Promise<void>(() => {}),
    inFlight: () => undefined,
    stop: () => pool.stop(),
  };
}

/** Runs the service from configuration file `file` until a signal or the loss of NATS; the exit code. */
export async function runService(file: string, version: string): Promise<number> {
  // Until the service is up, a SIGHUP (systemctl reload) must not kill it: remember it instead.
  let reloadPending = false;
  const early = () => (reloadPending = true);
  process.on('SIGHUP', early);

  let config = loadConfig(file);
  const log = createLogger(config.log.level);
  log.info('starting', { version, node: process.version, config: file, mode: config.callout.mode, workers: config.workers, crypto: CRYPTO_BACKEND });
  if (CRYPTO_FALLBACK_REASON) log.warn('crypto runs on node:crypto and tweetnacl, not libsodium', { reason: CRYPTO_FALLBACK_REASON });
  const name = `${config.nats.name}@${hostname()}#${process.pid}`;
  // One worker runs in this thread; more run in worker threads, each with its own connections.
  const replica = config.workers === 1 ? await singleReplica(config, log, version, name) : await pooledReplica(file, config, log, version, name);
  const monitoring = config.http ? await startMonitoring(config.http, replica.metrics, replica.readiness, log) : undefined;
  const bound = monitoring?.address();
  if (bound && typeof bound === 'object') log.info('monitoring', { host: bound.address, port: bound.port, paths: ['/healthz', '/readyz', '/metrics'] });

  // Reloads run one at a time. The file is checked here first: a bad new configuration keeps the
  // running one everywhere.
  let reloading: Promise<void> = Promise.resolve();
  const reload = async () => {
    let next: Config;
    try {
      next = loadConfig(file);
    } catch (err) {
      log.error('reload failed; keeping the running configuration', { error: (err as Error).message });
      return;
    }
    const before = redactedConfig(config) as Record<string, unknown>;
    const after = redactedConfig(next) as Record<string, unknown>;
    const ignored = RESTART_ONLY.filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]));
    if (ignored.length) log.warn('these settings changed but need a restart to apply', { keys: ignored });
    const { errors, issuersKept } = await replica.reload(next);
    if (errors.length) {
      log.error('reload failed; keeping the running configuration', { error: errors.join('; ') });
      return;
    }
    config = next;
    log.info('configuration reloaded', {
      issuers: config.issuers.length,
      rules: config.policy.ruleNames.length,
      ...(issuersKept !== undefined ? { issuers_kept: issuersKept } : {}),
    });
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
    void replica.closed().then(() => resolve('connection closed'));
  });
  log.info('stopping', { signal: reason, ...(replica.inFlight() !== undefined ? { in_flight: replica.inFlight() } : {}) });
  await replica.stop();
  monitoring?.close();
  // Losing NATS for good is a failure: let the supervisor (Restart=on-failure) bring us back.
  return reason === 'connection closed' ? 1 : 0;
}
