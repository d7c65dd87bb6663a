/**
 * Reconnect storm: what users see when nats-server restarts. N clients (distinct RS256 tokens)
 * connect at once through the callout and retry after a random 250 ms-2 s pause whenever they
 * are refused, time out or lose their socket (storm-clients.ts); accepted clients stay connected.
 *
 * Per nats-server version, with a fresh service process (`node dist/src/main.js run`, as
 * deployed) and nats-server on a fixed port:
 *   1. cold     all clients start at once against an empty decision cache;
 *   2. verify   every connected client publishes to a subject its rule allows and to one it does
 *               not (a neighbour's), and must see exactly one Permissions Violation;
 *   3. restart  nats-server is stopped (SIGTERM, SIGKILL after 2 s) and started again on the same
 *               port with the same configuration; clients and the service reconnect by
 *               themselves, the service's cache is warm. Measured from when the new server
 *               accepts connections.
 *
 * A connect phase ends when every client is connected or after `maxSeconds`. Its figures: time
 * to all connected, connected clients at 5/10/20/30/60 s and at the cap, attempts (and per
 * client), failures by reason, the service's counters over the phase (from /metrics), CPU of
 * the three processes, and "late answers": allow answers the service sent minus clients that got
 * in, i.e. answers that reached nats-server after it had given up on the request.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { calloutServerConfig } from '../test/helpers/callout-fixture.js';
import { startLocalIssuer } from '../test/helpers/local-issuer.js';
import type { NatsServerBinary } from '../test/helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../test/helpers/nats-server.js';
import { benchClaims, benchSubject, configDoc } from './fixtures.js';
import { freeServerPort } from '../test/helpers/free-port.js';
import { ensureOpenFiles, loopbackSources } from './host-limits.js';
import { machineJiffies, nowNs, peakRssKiB, processCpuMicros, table } from './lib.js';
import { connectPayload } from './loadgen.js';
import { installHooks, makeWorkDir, pickServers, removeWorkDir, startService, waitReady, type RunningService } from './processes.js';
import { metricsDelta, scrapeMetrics, sumSeries, type MetricSamples } from './prometheus.js';
import { ClientFleet, type FleetWindow, type VerifyResult } from './storm-clients.js';
import { newRsaKey, signStormTokens } from './storm-tokens.js';

export interface ReconnectStormOptions {
  readonly clients: number;
  /** Cap of each connect phase. */
  readonly maxSeconds: number;
  /** Version prefixes ('2.15', '2.10'), 'newest' or 'all'. */
  readonly servers: readonly string[];
  readonly xkey: boolean;
  /** `nats.connections` of the service; its default when undefined. */
  readonly connections?: number | undefined;
  /** `workers` of the service; its default when undefined. */
  readonly workers?: number | 'auto' | undefined;
  /** The service's log level; its log is kept as /tmp/oidc-callout-storm-<server>.log when set. */
  readonly serviceLog?: 'debug' | 'info' | 'warn' | 'error' | undefined;
  /** Write a V8 CPU profile of the service process into this directory. */
  readonly profileDir?: string | undefined;
  /** nats-server's `authorization.timeout` in seconds (default 2). */
  readonly authTimeoutS?: number | undefined;
  readonly log: (line: string) => void;
}

/** CPU seconds (utime + stime, all threads) over a phase. */
export interface PhaseCpu {
  readonly service: number;
  readonly nats: number;
  readonly loadgen: number;
  /** Of `loadgen`, in the kernel: mostly loopback TCP, whose receive side runs in the sender's context. */
  readonly loadgenSystem: number;
  /** Busy fraction of the whole machine (/proc/stat). */
  readonly machineBusy: number;
  /**
   * Event-loop delay of the load generator, ms: how late its timers (attempt timeouts, retry
   * pauses, the phase cap) and socket reads ran. Seconds here mean the clients' timing is off.
   */
  readonly loadgenLoopDelayMs: { readonly p50: number; readonly p99: number; readonly max: number };
}

export interface ConnectPhase {
  readonly phase: 'cold' | 'restart';
  /** Length of the phase: until all were connected, or the cap. */
  readonly seconds: number;
  /** Seconds until every client was connected; null when the cap came first. */
  readonly allConnectedS: number | null;
  /** Clients connected at 5, 10, 20, 30, 60 s (those below the cap) and at the cap ('cap'). */
  readonly connectedAt: Record<string, number>;
  readonly attempts: number;
  readonly attemptsPerClientMean: number;
  readonly attemptsPerClientMax: number;
  readonly connects: number;
  /** Failed attempts by reason (see FailOutcome in storm-clients.ts). */
  readonly failures: Record<string, number>;
  readonly disconnects: number;
  readonly errorsWhileConnected: number;
  /** Successful attempts, TCP connect to PONG. */
  readonly connectMs: { readonly p50: number; readonly p90: number; readonly p99: number };
  /** Allow answers the service counted over the phase; null when /metrics did not answer. */
  readonly allowAnswers: number | null;
  /** allowAnswers - connects (in the phase and while its final scrape ran): allow answers nats-server no longer waited for. */
  readonly lateAnswers: number | null;
  readonly cache: { readonly hit: number; readonly miss: number } | null;
  /** Deltas of every series of the service with `shed` or `code` in it (labels included). */
  readonly serviceCounters: Record<string, number>;
  readonly cpu: PhaseCpu;
  readonly details: string[];
  /** restart only: how long nats-server took to stop, and from SIGTERM to the new one accepting. */
  readonly stopS?: number;
  readonly downS?: number;
  /** restart only: attempts (all refused or reset) while no server was listening. */
  readonly attemptsWhileDown?: number;
}

/** VmHWM in MiB (null: the process could not be read). */
export interface PeakRss {
  readonly service: number | null;
  /** The first nats-server (cold phase and permission check) and the restarted one. */
  readonly natsCold: number | null;
  readonly natsRestart: number | null;
  /** The bench process: the load generator and the tokens it holds. */
  readonly loadgen: number | null;
}

/** One storm against one nats-server version; a line of bench/results.jsonl's `results`. */
export interface StormRun {
  readonly group: 'storm';
  readonly server: string;
  readonly clients: number;
  readonly xkey: boolean;
  readonly maxSeconds: number;
  readonly sourceAddresses: number;
  readonly cold: ConnectPhase;
  readonly verify: VerifyResult & { readonly cpu: PhaseCpu };
  readonly restart: ConnectPhase;
  readonly peakRssMiB: PeakRss;
  /** Set when the service process died during the run (its stderr tail). */
  readonly serviceDied?: string;
}

const CHECKPOINTS_S = [5, 10, 20, 30, 60];
/** Longer than the server's 2 s authorization timeout, which normally ends a failing attempt first. */
const ATTEMPT_TIMEOUT_MS = 5000;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 2000;
const AUTH_TIMEOUT_S = 2;
/** Well below the ~28k ports of the default ip_local_port_range. */
const CLIENTS_PER_SOURCE = 10_000;
const TOKEN_LIFETIME_S = 2 * 3600;
const VERIFY_TIMEOUT_MS = 30_000;
const CACHE_SERIES = 'oidc_callout_allowed_from_cache_total';

const mib = (kib: number | undefined): number | null => (kib === undefined ? null : Math.round(kib / 1024));
const int = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : Math.round(v).toLocaleString('en-US'));
const dec = (v: number | null | undefined, digits = 1): string => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(digits));

/** Reads the CPU counters of the three processes and of the machine; call `end()` for the phase figures. */
function cpuMeter(servicePid: number, natsPid: number): { end(): PhaseCpu } {
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const svc0 = processCpuMicros(servicePid);
  const nats0 = processCpuMicros(natsPid);
  const gen0 = process.cpuUsage();
  const box0 = machineJiffies();
  return {
    end() {
      const box1 = machineJiffies();
      const gen = process.cpuUsage(gen0);
      loop.disable();
      return {
        service: (processCpuMicros(servicePid) - svc0) / 1e6,
        nats: (processCpuMicros(natsPid) - nats0) / 1e6,
        loadgen: (gen.user + gen.system) / 1e6,
        loadgenSystem: gen.system / 1e6,
        machineBusy: box1.total === box0.total ? 0 : (box1.busy - box0.busy) / (box1.total - box0.total),
        loadgenLoopDelayMs: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
      };
    },
  };
}

interface PhaseContext {
  readonly label: string;
  readonly fleet: ClientFleet;
  readonly service: RunningService;
  readonly nats: RunningNats;
  readonly metricsPort: number;
  readonly maxSeconds: number;
  readonly log: (line: string) => void;
}

const failureSummary = (w: FleetWindow): string =>
  Object.entries(w.failures)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v.toLocaleString('en-US')}`)
    .join(', ');

/**
 * Measures one connect phase from now (after calling `kick`, if given) until every client is
 * connected or the cap. `before` is the service's /metrics at the start.
 */
async function connectPhase(
  phase: ConnectPhase['phase'],
  ctx: PhaseContext,
  before: Promise<MetricSamples | undefined>,
  kick?: () => void,
): Promise<ConnectPhase> {
  const { fleet } = ctx;
  const cpu = cpuMeter(ctx.service.pid, ctx.nats.pid);
  const w = fleet.beginWindow(phase);
  kick?.();
  const elapsed = (): number => Number(nowNs() - w.startNs) / 1e9;
  const connectedAt: Record<string, number> = {};
  const checkpoints = CHECKPOINTS_S.filter((s) => s < ctx.maxSeconds).map((s) =>
    setTimeout(() => (connectedAt[`${s}s`] = fleet.connected), Math.max(0, s * 1000 - elapsed() * 1000)),
  );
  const progress = setInterval(() => {
    const state = `${int(fleet.connected)} / ${int(fleet.size)} connected, ${int(w.attempts)} attempts`;
    ctx.log(`  [${ctx.label} ${phase}] ${elapsed().toFixed(0)} s: ${state} (${failureSummary(w) || 'no failures'})`);
  }, 5000);
  const all = await fleet.waitAllConnected(Math.max(0, ctx.maxSeconds * 1000 - elapsed() * 1000));
  const seconds = elapsed();
  const phaseCpu = cpu.end();
  // The clients go on; what they do from now on (also during the scrape below) is not this phase's.
  const after = fleet.beginWindow(`after ${phase}`);
  for (const t of checkpoints) clearTimeout(t);
  clearInterval(progress);
  // Checkpoints after the phase ended: everyone was connected by then.
  for (const s of CHECKPOINTS_S.filter((x) => x < ctx.maxSeconds)) connectedAt[`${s}s`] ??= fleet.connected;
  connectedAt['cap'] = fleet.connected;
  const outcome = all ? `all ${int(fleet.size)} connected after ${dec(seconds)} s` : `cap: ${int(fleet.connected)} connected after ${dec(seconds, 0)} s`;
  ctx.log(`  [${ctx.label} ${phase}] ${outcome}, ${int(w.attempts)} attempts`);

  const delta = metricsDelta(await before, await scrapeMetrics(ctx.metricsPort));
  // An overloaded service reads its counters for the scrape late, and the allow answers it sends
  // meanwhile let clients in after the phase: count those clients against them too.
  const inDuringScrape = after.connects;
  if (!delta) ctx.log(`  [${ctx.label} ${phase}] the service's /metrics did not answer: no service counters for this phase`);
  const allow = delta ? sumSeries(delta, 'oidc_callout_requests_total', { result: 'allow' }) : null;
  const serviceCounters: Record<string, number> = {};
  for (const [series, v] of delta ?? []) if (/shed|code/.test(series)) serviceCounters[series] = v;
  const [p50, p90, p99] = w.latency.percentiles(50, 90, 99).map((ns) => ns / 1e6);
  return {
    phase,
    seconds,
    allConnectedS: all ? seconds : null,
    connectedAt,
    attempts: w.attempts,
    attemptsPerClientMean: w.attempts / fleet.size,
    attemptsPerClientMax: w.attemptsPerClient.reduce((m, v) => Math.max(m, v), 0),
    connects: w.connects,
    failures: { ...w.failures },
    disconnects: w.disconnects,
    errorsWhileConnected: w.errorsWhileConnected,
    connectMs: { p50: p50!, p90: p90!, p99: p99! },
    allowAnswers: allow,
    lateAnswers: allow === null ? null : allow - w.connects - inDuringScrape,
    cache: delta ? { hit: sumSeries(delta, CACHE_SERIES, { result: 'hit' }), miss: sumSeries(delta, CACHE_SERIES, { result: 'miss' }) } : null,
    serviceCounters,
    cpu: phaseCpu,
    details: [...w.details],
  };
}

/** Runs the storm against each selected nats-server; tokens are signed once for all of them. */
export async function runReconnectStorm(opts: ReconnectStormOptions): Promise<StormRun[]> {
  installHooks();
  const nofile = ensureOpenFiles(opts.clients);
  const sources = loopbackSources(opts.clients, CLIENTS_PER_SOURCE);
  const servers = await pickServers(opts.servers);
  const privateKey = newRsaKey();
  const idp = await startLocalIssuer({ alg: 'RS256', privateKey });
  const runs: StormRun[] = [];
  try {
    const t0 = Date.now();
    const tokens = await signStormTokens({
      privateKey,
      kid: idp.kid,
      issuer: idp.issuer,
      count: opts.clients,
      lifetimeSeconds: TOKEN_LIFETIME_S,
      minValiditySeconds: 3600,
    });
    const payloads = tokens.map(connectPayload);
    opts.log(
      `signed ${tokens.length.toLocaleString('en-US')} RS256 tokens (${payloads[0]!.length} byte CONNECT) in ${((Date.now() - t0) / 1000).toFixed(1)} s; ` +
        `open files ${nofile}; source addresses ${sources[0]}..${sources.at(-1)}`,
    );
    // Not one of the clients' tokens: the readiness probe must leave the decision cache cold for them.
    const probeToken = await idp.sign({ ...benchClaims(opts.clients), exp: Math.floor(Date.now() / 1000) + TOKEN_LIFETIME_S });
    for (const bin of servers) runs.push(await stormOnce(bin, opts, idp.issuer, payloads, probeToken, sources));
  } finally {
    await idp.stop();
  }
  return runs;
}

async function stormOnce(
  bin: NatsServerBinary,
  opts: ReconnectStormOptions,
  issuer: string,
  payloads: Buffer[],
  probeToken: string,
  sources: string[],
): Promise<StormRun> {
  const label = `${bin.version}${opts.xkey ? '' : ' no-xkey'}`;
  const work = makeWorkDir();
  const account = createAccount();
  const curve = createCurve();
  const natsConfig = calloutServerConfig({
    issuer: account.getPublicKey(),
    xkey: opts.xkey ? curve.getPublicKey() : undefined,
    password: 'bench-password',
    authTimeoutSeconds: opts.authTimeoutS ?? AUTH_TIMEOUT_S,
  });
  // A fixed port below the ephemeral range, so the restarted server can take it again.
  const port = await freeServerPort();
  const metricsPort = await freeServerPort([port]);
  let nats = await startNatsServer({ bin: bin.path, config: natsConfig, port });
  let service: RunningService | undefined;
  const fleet = new ClientFleet({
    port,
    payloads,
    sources,
    attemptTimeoutMs: Math.max(ATTEMPT_TIMEOUT_MS, (opts.authTimeoutS ?? AUTH_TIMEOUT_S) * 1000 + 3000),
    retryMinMs: RETRY_MIN_MS,
    retryMaxMs: RETRY_MAX_MS,
  });
  try {
    writeFileSync(join(work, 'issuer.nk'), new TextDecoder().decode(account.getSeed()), { mode: 0o600 });
    writeFileSync(join(work, 'xkey.nk'), new TextDecoder().decode(curve.getSeed()), { mode: 0o600 });
    const doc = configDoc({
      natsUrl: nats.url,
      issuer,
      issuerSeed: { file: 'issuer.nk' },
      xkeySeed: opts.xkey ? { file: 'xkey.nk' } : undefined,
      logLevel: opts.serviceLog ?? 'error',
      httpListen: `127.0.0.1:${metricsPort}`,
      connections: opts.connections,
      workers: opts.workers,
    });
    const configFile = join(work, 'oidc-callout.yaml');
    writeFileSync(configFile, `# written by bench/reconnect-storm.ts (JSON is YAML)\n${JSON.stringify(doc, null, 2)}\n`);
    service = await startService(configFile, join(work, 'service.log'), opts.profileDir);
    await waitReady(port, probeToken, service);
    const svc = service;
    const ctx = (n: RunningNats): PhaseContext => ({ label, fleet, service: svc, nats: n, metricsPort, maxSeconds: opts.maxSeconds, log: opts.log });

    opts.log(`\n${label}: cold start, ${int(fleet.size)} clients at once (cap ${opts.maxSeconds} s)`);
    const coldBefore = await scrapeMetrics(metricsPort);
    const cold = await connectPhase('cold', ctx(nats), Promise.resolve(coldBefore), () => fleet.start());

    opts.log(`${label}: permission check of ${int(fleet.connected)} connected clients`);
    fleet.beginWindow('verify');
    const verifyCpu = cpuMeter(svc.pid, nats.pid);
    const checked = await fleet.verifyPermissions(
      (i) => ({ allowed: `orders.acme.${benchSubject(i)}.created`, denied: `orders.acme.${benchSubject(i + 1)}.created` }),
      VERIFY_TIMEOUT_MS,
    );
    const verify = { ...checked, cpu: verifyCpu.end() };
    const counts = `${int(verify.correct)} of ${int(verify.checked)} right, ${int(verify.mismatches)} wrong, ${int(verify.notConnected)} not connected`;
    opts.log(`  ${counts} (${dec(verify.seconds)} s)`);
    for (const d of verify.details) opts.log(`    ${d}`);

    opts.log(`${label}: restarting nats-server on port ${port}`);
    const natsCold = peakRssKiB(nats.pid);
    const down = fleet.beginWindow('down');
    const stopStart = nowNs();
    await nats.stop();
    const stopS = Number(nowNs() - stopStart) / 1e9;
    nats = await startNatsServer({ bin: bin.path, config: natsConfig, port });
    const downS = Number(nowNs() - stopStart) / 1e9;
    opts.log(`  stopped in ${stopS.toFixed(1)} s, accepting connections again ${downS.toFixed(1)} s after SIGTERM`);
    // The phase starts now: clients reconnect on their own, the metrics scrape runs alongside.
    const restart = await connectPhase('restart', ctx(nats), scrapeMetrics(metricsPort));

    const died = svc.exited() ? svc.stderr().slice(-2000) : undefined;
    return {
      group: 'storm',
      server: bin.version,
      clients: fleet.size,
      xkey: opts.xkey,
      maxSeconds: opts.maxSeconds,
      sourceAddresses: sources.length,
      cold,
      verify,
      restart: { ...restart, stopS, downS, attemptsWhileDown: down.attempts },
      peakRssMiB: { service: mib(peakRssKiB(svc.pid)), natsCold: mib(natsCold), natsRestart: mib(peakRssKiB(nats.pid)), loadgen: mib(peakRssKiB(process.pid)) },
      ...(died === undefined ? {} : { serviceDied: died }),
    };
  } finally {
    fleet.stop();
    await service?.stop();
    await nats.stop();
    if (opts.serviceLog) copyFileSync(join(work, 'service.log'), `/tmp/oidc-callout-storm-${label.replace(/\s+/g, '-')}.log`);
    removeWorkDir(work);
  }
}

// ---- report ---------------------------------------------------------------------------------

/** One column per run and phase (cold, restart), one row per figure. */
export function stormTable(runs: readonly StormRun[]): string {
  const cols = runs.flatMap((r) => [r.cold, r.restart].map((p) => ({ run: r, p })));
  const header = ['', ...cols.map(({ run, p }) => `${run.server}${run.xkey ? '' : ' no-xkey'} ${p.phase}`)];
  const rows: string[][] = [];
  const row = (name: string, cell: (run: StormRun, p: ConnectPhase) => string): void => {
    rows.push([name, ...cols.map(({ run, p }) => cell(run, p))]);
  };
  row('clients', (r) => int(r.clients));
  row('all connected after s', (r, p) => (p.allConnectedS === null ? `> ${r.maxSeconds}` : dec(p.allConnectedS)));
  for (const s of CHECKPOINTS_S) {
    if (cols.some(({ p }) => p.connectedAt[`${s}s`] !== undefined)) row(`connected at ${s} s`, (_, p) => int(p.connectedAt[`${s}s`]));
  }
  row('connected at the cap', (_, p) => int(p.connectedAt['cap']));
  row('attempts', (_, p) => int(p.attempts));
  row('attempts/client mean', (_, p) => dec(p.attemptsPerClientMean, 2));
  row('attempts/client max', (_, p) => int(p.attemptsPerClientMax));
  const reasons = [...new Set(cols.flatMap(({ p }) => Object.keys(p.failures)))].sort();
  for (const k of reasons) row(`failed: ${k}`, (_, p) => int(p.failures[k] ?? 0));
  row('accepted, then lost', (_, p) => int(p.disconnects));
  row('connect p50 / p99 ms', (_, p) => `${dec(p.connectMs.p50, 0)} / ${dec(p.connectMs.p99, 0)}`);
  row('allow answers (service)', (_, p) => int(p.allowAnswers));
  row('late answers (allow - in)', (_, p) => int(p.lateAnswers));
  row('late % of allow answers', (_, p) => (p.lateAnswers === null || !p.allowAnswers ? '-' : `${dec((100 * p.lateAnswers) / p.allowAnswers)} %`));
  row('cache hit / miss', (_, p) => (p.cache ? `${int(p.cache.hit)} / ${int(p.cache.miss)}` : '-'));
  const series = [...new Set(cols.flatMap(({ p }) => Object.keys(p.serviceCounters)))].sort();
  for (const s of series) row(s.replace(/^oidc_callout_/, ''), (_, p) => int(p.serviceCounters[s] ?? 0));
  row('cpu s service', (_, p) => dec(p.cpu.service));
  row('cpu s nats-server', (_, p) => dec(p.cpu.nats));
  row('cpu s load generator (sys)', (_, p) => `${dec(p.cpu.loadgen)} (${dec(p.cpu.loadgenSystem)})`);
  row('load generator loop delay p99 / max ms', (_, p) => `${dec(p.cpu.loadgenLoopDelayMs.p99, 0)} / ${dec(p.cpu.loadgenLoopDelayMs.max, 0)}`);
  row('box busy', (_, p) => `${Math.round(p.cpu.machineBusy * 100)} %`);
  row('nats-server stop s / down s', (_, p) => (p.stopS === undefined ? '' : `${dec(p.stopS)} / ${dec(p.downS)}`));
  row('attempts while down', (_, p) => (p.attemptsWhileDown === undefined ? '' : int(p.attemptsWhileDown)));
  row('peak RSS MiB service', (r, p) => (p.phase === 'cold' ? '' : int(r.peakRssMiB.service)));
  row('peak RSS MiB nats-server', (r, p) => int(p.phase === 'cold' ? r.peakRssMiB.natsCold : r.peakRssMiB.natsRestart));
  row('peak RSS MiB load generator', (r, p) => (p.phase === 'cold' ? '' : int(r.peakRssMiB.loadgen)));
  return table(header, rows);
}

/** One row per run: the permission check between the two connect phases. */
export function verifyTable(runs: readonly StormRun[]): string {
  return table(
    ['permission check', 'checked', 'right', 'wrong', 'not connected', 'seconds', 'cpu s svc / nats / gen'],
    runs.map((r) => [
      `${r.server}${r.xkey ? '' : ' no-xkey'}`,
      int(r.verify.checked),
      int(r.verify.correct),
      int(r.verify.mismatches),
      int(r.verify.notConnected),
      dec(r.verify.seconds),
      `${dec(r.verify.cpu.service)} / ${dec(r.verify.cpu.nats)} / ${dec(r.verify.cpu.loadgen)}`,
    ]),
  );
}
