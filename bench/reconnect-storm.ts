/**
 * Reconnect storm: what users see when nats-server restarts. N clients (distinct RS256 tokens)
 * connect at once through the callout and retry after a random 250 ms-2 s pause whenever they
 * are refused, time out or lose their socket (storm-clients.ts); accepted clients stay connected.
 *
 * Per nats-server version, with a fresh service process (`node dist/src/main.js run`, as
 * deployed) and nats-server on a fixed port (or a cluster of `cluster` nodes on fixed ports,
 * routed on 127.0.0.1, each with the same callout block; client i connects to node i % cluster
 * and the service's `nats.servers` lists every node):
 *   1. cold     all clients start at once against an empty decision cache;
 *   2. verify   every connected client publishes to a subject its rule allows and to one it does
 *               not (a neighbour's), and must see exactly one Permissions Violation;
 *   3. restart  `full` (the storm): every nats-server is stopped (SIGTERM, SIGKILL after 2 s) at
 *               once and started again on the same ports with the same configuration; clients
 *               and the service reconnect by themselves, the service's cache is warm. Measured
 *               from when the new servers accept connections. `rolling`: the servers are
 *               restarted one after another, the next stopped as soon as the previous one
 *               accepts connections again (not waiting for its clients); measured from the first
 *               SIGTERM.
 *
 * A connect phase ends when every client is connected or after `maxSeconds`. Its figures: time
 * to all connected, connected clients at 5/10/20/30/60 s and at the cap, goodput over time
 * (connected clients and successful connects per 5 s), attempts (and per client), failures by
 * reason, the service's counters over the phase (from /metrics), CPU of the processes, and "late
 * answers": allow answers the service sent minus clients that got in, i.e. answers that reached
 * nats-server after it had given up on the request.
 *
 * Every process holds one socket per client it serves, within the open-file limit
 * (host-limits.ts): the fleet runs in this process when it fits, else in child processes
 * (storm-fleet.ts); a nats-server cannot be split, so a run whose share per server does not fit
 * is refused.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { autoWorkers, DEFAULTS } from '../src/config.js';
import { calloutServerConfig } from '../test/helpers/callout-fixture.js';
import { freeServerPort } from '../test/helpers/free-port.js';
import { startLocalIssuer } from '../test/helpers/local-issuer.js';
import { connections as nodeConnections, startNatsCluster, type ClusterNode } from '../test/helpers/nats-cluster.js';
import type { NatsServerBinary } from '../test/helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../test/helpers/nats-server.js';
import { benchClaims, configDoc } from './fixtures.js';
import { loopbackSources, planOpenFiles, type OpenFilesPlan } from './host-limits.js';
import { clockTicks, machineJiffies, nowNs, peakRssKiB, processCpuMicros, table } from './lib.js';
import { connectPayload } from './loadgen.js';
import { installHooks, makeWorkDir, pickServers, removeWorkDir, startService, waitReady, type RunningService } from './processes.js';
import { metricsDelta, scrapeMetrics, sumSeries, type MetricSamples } from './prometheus.js';
import type { FleetWindow, VerifyResult } from './storm-clients.js';
import { startStormFleet, type ClosedWindow, type LoopDelayMs, type StormFleet, type StormFleetOptions } from './storm-fleet.js';
import { newRsaKey, signStormTokens } from './storm-tokens.js';

export type RestartMode = 'full' | 'rolling';

export interface ReconnectStormOptions {
  readonly clients: number;
  /** Cap of each connect phase. */
  readonly maxSeconds: number;
  /** Version prefixes ('2.15', '2.10'), 'newest' or 'all'. */
  readonly servers: readonly string[];
  readonly xkey: boolean;
  /** nats-servers in one cluster (default 1: a single server, no cluster block). */
  readonly cluster?: number | undefined;
  /** How the restart phase restarts the servers (default full). */
  readonly restart?: RestartMode | undefined;
  /** At most this many clients per fleet process (default: what the open-file limit allows). */
  readonly clientsPerProcess?: number | undefined;
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
  /**
   * Before the service starts, run the fleet this many seconds against nats-server with nobody
   * answering the callout: what every failing attempt costs nats-server by itself.
   */
  readonly unansweredSeconds?: number | undefined;
  /** The clients' own timeout for one attempt, s (default: clientAttemptTimeoutS of the server's timeout). */
  readonly clientTimeoutS?: number | undefined;
  readonly log: (line: string) => void;
}

/** CPU seconds (utime + stime, all threads) over a phase. */
export interface PhaseCpu {
  readonly service: number;
  /** All nats-servers together. */
  readonly nats: number;
  /** Each nats-server (node i of the cluster; a restarted node's old and new process added). */
  readonly natsPerServer: readonly number[];
  /** All load generator processes: the bench process and, when the fleet is split, its children. */
  readonly loadgen: number;
  /** Of `loadgen`, in the kernel: mostly loopback TCP, whose receive side runs in the sender's context. */
  readonly loadgenSystem: number;
  /** Each fleet child process (empty when the fleet runs in the bench process). */
  readonly loadgenPerProcess: readonly { readonly cpu: number; readonly system: number }[];
  /** Busy fraction of the whole machine (/proc/stat). */
  readonly machineBusy: number;
  /**
   * Event-loop delay of the load generator, ms: how late its timers (attempt timeouts, retry
   * pauses, the phase cap) and socket reads ran. Seconds here mean the clients' timing is off.
   * With fleet child processes: the worst of them (each figure on its own).
   */
  readonly loadgenLoopDelayMs: LoopDelayMs;
  /** Each fleet child process (empty when the fleet runs in the bench process). */
  readonly loadgenLoopDelayPerProcessMs: readonly LoopDelayMs[];
}

/** One 5 s interval of a connect phase. */
export interface GoodputSample {
  /** Seconds since the phase began, when the sample was taken (nominally 5, 10, ...). */
  readonly s: number;
  /** Clients connected then. */
  readonly connected: number;
  /** Successful attempts and all attempts since the previous sample. */
  readonly connects: number;
  readonly attempts: number;
}

export interface ConnectPhase {
  readonly phase: 'cold' | 'restart';
  /** Length of the phase: until all were connected, or the cap. */
  readonly seconds: number;
  /** Seconds until every client was connected; null when the cap came first. */
  readonly allConnectedS: number | null;
  /** Clients connected at 5, 10, 20, 30, 60 s (those below the cap) and at the cap ('cap'). */
  readonly connectedAt: Record<string, number>;
  /** Every 5 s of the phase: connected clients, connects and attempts in the interval. */
  readonly goodput: readonly GoodputSample[];
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
  /**
   * restart only: how long nats-server took to stop (the slowest), and from the (first) SIGTERM
   * until the (last) new one accepted connections.
   */
  readonly stopS?: number;
  readonly downS?: number;
  /** restart only, full: attempts (all refused or reset) while no server was listening. */
  readonly attemptsWhileDown?: number;
  /** restart only, clusters: seconds from the phase start until every route was up again (null: not within 15 s). */
  readonly routesUpS?: number | null;
}

/**
 * The fleet against nats-server with no service subscribed: every attempt waits the whole
 * authorization timeout and fails. Its CPU is what nats-server spends on failing attempts alone.
 */
export interface UnansweredPhase {
  readonly seconds: number;
  readonly attempts: number;
  readonly failures: Record<string, number>;
  /** nats-server CPU seconds (all nodes) and per attempt (µs). */
  readonly natsCpu: number;
  readonly natsMicrosPerAttempt: number;
  readonly loadgenCpu: number;
  readonly machineBusy: number;
}

/** VmHWM in MiB (null: the process could not be read). */
export interface PeakRss {
  readonly service: number | null;
  /** All nats-servers together: the first ones (cold phase and permission check) and the restarted ones. */
  readonly natsCold: number | null;
  readonly natsRestart: number | null;
  /** Each nats-server. */
  readonly natsColdPerServer: readonly (number | null)[];
  readonly natsRestartPerServer: readonly (number | null)[];
  /** The load generator: the bench process (it holds the tokens) and its fleet children. */
  readonly loadgen: number | null;
  /** Each fleet child process (empty when the fleet runs in the bench process). */
  readonly loadgenPerProcess: readonly (number | null)[];
}

/** One storm against one nats-server version; a line of bench/results.jsonl's `results`. */
export interface StormRun {
  readonly group: 'storm';
  readonly server: string;
  readonly clients: number;
  readonly xkey: boolean;
  readonly maxSeconds: number;
  /** nats-servers in the cluster (1: a single server). */
  readonly cluster: number;
  readonly restartMode: RestartMode;
  /** Processes holding the clients (1: the bench process) and the clients of each. */
  readonly fleetProcesses: number;
  readonly fleetSizes: readonly number[];
  /** The open-file limit the run had. */
  readonly openFiles: number;
  /** The service's connections on each nats-server once it was ready (clusters only). */
  readonly serviceConnectionsPerServer?: readonly number[];
  readonly sourceAddresses: number;
  /** The service's effective `nats.connections`, `workers` and nats-server's `authorization.timeout` (s). */
  readonly serviceConnections: number;
  readonly serviceWorkers: number;
  readonly authTimeoutS: number;
  /** The clients' own timeout for one attempt, s. */
  readonly clientTimeoutS: number;
  readonly unanswered?: UnansweredPhase;
  readonly cold: ConnectPhase;
  readonly verify: VerifyResult & { readonly cpu: PhaseCpu };
  readonly restart: ConnectPhase;
  readonly peakRssMiB: PeakRss;
  /** Set when the service process died during the run (its stderr tail). */
  readonly serviceDied?: string;
}

const CHECKPOINTS_S = [5, 10, 20, 30, 60];
const GOODPUT_EVERY_S = 5;
/** Longer than the server's 2 s authorization timeout, which normally ends a failing attempt first. */
const ATTEMPT_TIMEOUT_MS = 5000;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 2000;
const AUTH_TIMEOUT_S = 2;
/** nats-server's default `authorization.timeout`, the storm's unless `--auth-timeout` says otherwise. */
export const STORM_AUTH_TIMEOUT_S = AUTH_TIMEOUT_S;
/** The clients' own timeout for one attempt (s): 3 s longer than the server's, at least 5 s. */
export const clientAttemptTimeoutS = (authTimeoutS: number): number => Math.max(ATTEMPT_TIMEOUT_MS / 1000, authTimeoutS + 3);
/** When clients bind to source addresses: well below the ~28k ports of the default ip_local_port_range. */
const CLIENTS_PER_SOURCE = 10_000;
const TOKEN_LIFETIME_S = 2 * 3600;
const VERIFY_TIMEOUT_MS = 30_000;
const CACHE_SERIES = 'oidc_callout_allowed_from_cache_total';
/** The service's connections are named `oidc-callout`, `oidc-callout#2`, ... (its default `nats.name`). */
const SERVICE_CONNECTION_NAME = /^oidc-callout(#\d+)?$/;

const mib = (kib: number | undefined): number | null => (kib === undefined ? null : Math.round(kib / 1024));
const int = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : Math.round(v).toLocaleString('en-US'));
const dec = (v: number | null | undefined, digits = 1): string => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(digits));
const sumOrNull = (vs: readonly (number | null)[]): number | null => (vs.some((v) => v === null) ? null : vs.reduce<number>((a, v) => a + v!, 0));
const maxOf = (vs: readonly (number | null)[]): number | null => vs.reduce<number | null>((m, v) => (v === null ? m : m === null ? v : Math.max(m, v)), null);

/** utime and stime of a process in µs (all threads), from /proc/<pid>/stat; zero once it is gone. */
function processCpuSplit(pid: number): { user: number; system: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // As processCpuMicros (lib.ts), which gives only the sum: fields 14 and 15, after the name.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: (Number(fields[11]) * 1e6) / clockTicks(), system: (Number(fields[12]) * 1e6) / clockTicks() };
  } catch {
    return { user: 0, system: 0 };
  }
}

/** processCpuMicros, zero once the process is gone (a stopped node's last reading is kept by the meter). */
function cpuMicros(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    return processCpuMicros(pid);
  } catch {
    return 0;
  }
}

// ---- the nats-servers -----------------------------------------------------------------------

/** One nats-server of the storm: the single server, or a node of the cluster. */
interface StormNode {
  /** Client port on 127.0.0.1, fixed for the run (also across restarts). */
  readonly port: number;
  /** The current process; undefined while stopped. */
  readonly pid: number | undefined;
  /** SIGTERM, SIGKILL after 2 s. */
  stop(): Promise<void>;
  /** Starts it again on the same ports, resolving once it accepts connections. */
  start(): Promise<void>;
}

interface StormServers {
  readonly nodes: readonly StormNode[];
  /** Every port the servers listen on (client, route, monitoring). */
  readonly ports: readonly number[];
  /** Resolves once every node has a route to every other (at once for a single server). */
  waitForRoutes(timeoutMs: number): Promise<void>;
  /** The service's connections on each node (undefined for a single server: all of them). */
  serviceConnections(): Promise<number[] | undefined>;
  stop(): Promise<void>;
}

/**
 * One nats-server as before (no cluster block), or `size` nodes routed to each other on
 * 127.0.0.1 (test/helpers/nats-cluster.ts: fixed client, route and monitoring ports below the
 * ephemeral range, `no_advertise`, each with `config`).
 */
async function startServers(bin: string, config: string, size: number): Promise<StormServers> {
  if (size === 1) {
    // A fixed port below the ephemeral range, so the restarted server can take it again.
    const port = await freeServerPort();
    let nats: RunningNats | undefined = await startNatsServer({ bin, config, port });
    const node: StormNode = {
      port,
      get pid() {
        return nats?.pid;
      },
      async stop() {
        const running = nats;
        nats = undefined;
        await running?.stop();
      },
      async start() {
        nats = await startNatsServer({ bin, config, port });
      },
    };
    return {
      nodes: [node],
      ports: [port],
      waitForRoutes: () => Promise.resolve(),
      serviceConnections: () => Promise.resolve(undefined),
      stop: () => node.stop(),
    };
  }
  const cluster = await startNatsCluster({ bin, config, size, clusterName: 'oidc-callout-bench' });
  const nodes = cluster.nodes.map(
    (n: ClusterNode): StormNode => ({
      port: n.port,
      get pid() {
        return n.server?.pid;
      },
      stop: () => n.stop(),
      start: () => n.start(),
    }),
  );
  return {
    nodes,
    ports: cluster.nodes.flatMap((n) => [n.port, n.clusterPort, Number(new URL(n.monitorUrl).port)]),
    waitForRoutes: (timeoutMs) => cluster.waitForRoutes(timeoutMs),
    serviceConnections: () =>
      Promise.all(cluster.nodes.map(async (n) => (await nodeConnections(n)).filter((c) => SERVICE_CONNECTION_NAME.test(c.name ?? '')).length)),
    stop: () => cluster.stop(),
  };
}

// ---- CPU ------------------------------------------------------------------------------------

interface CpuMeter {
  /** Node k's process is about to stop: keep what it used so far. */
  retire(k: number): void;
  /** Node k runs a new process, started within the phase: all of its CPU counts. */
  replace(k: number, pid: number | undefined): void;
  end(): PhaseCpu;
}

/**
 * Reads the CPU counters of the service, of each nats-server, of the load generator (this
 * process and the fleet's child processes, `fleetPids`; empty when the fleet runs here) and of
 * the machine; `end()` gives the phase figures.
 */
function cpuMeter(servicePid: number | undefined, natsPids: readonly (number | undefined)[], fleetPids: readonly number[]): CpuMeter {
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  // A dead service process throws here, as before: its CPU must not read as zero.
  const serviceCpu = (): number => (servicePid === undefined ? 0 : processCpuMicros(servicePid));
  const svc0 = serviceCpu();
  const slots = natsPids.map((pid) => ({ pid, base: cpuMicros(pid), used: 0 }));
  const fleet0 = fleetPids.map(processCpuSplit);
  const gen0 = process.cpuUsage();
  const box0 = machineJiffies();
  return {
    retire(k) {
      const slot = slots[k]!;
      slot.used += cpuMicros(slot.pid) - slot.base;
      slot.pid = undefined;
      slot.base = 0;
    },
    replace(k, pid) {
      slots[k]!.pid = pid;
      slots[k]!.base = 0;
    },
    end() {
      const box1 = machineJiffies();
      const gen = process.cpuUsage(gen0);
      loop.disable();
      const natsPerServer = slots.map((s) => (s.used + cpuMicros(s.pid) - s.base) / 1e6);
      const loadgenPerProcess = fleetPids.map((pid, k) => {
        const now = processCpuSplit(pid);
        const system = (now.system - fleet0[k]!.system) / 1e6;
        return { cpu: (now.user - fleet0[k]!.user) / 1e6 + system, system };
      });
      return {
        service: (serviceCpu() - svc0) / 1e6,
        nats: natsPerServer.reduce((a, b) => a + b, 0),
        natsPerServer,
        loadgen: (gen.user + gen.system) / 1e6 + loadgenPerProcess.reduce((a, p) => a + p.cpu, 0),
        loadgenSystem: gen.system / 1e6 + loadgenPerProcess.reduce((a, p) => a + p.system, 0),
        loadgenPerProcess,
        machineBusy: box1.total === box0.total ? 0 : (box1.busy - box0.busy) / (box1.total - box0.total),
        loadgenLoopDelayMs: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
        loadgenLoopDelayPerProcessMs: [],
      };
    },
  };
}

/** With fleet child processes, the load generator's event-loop delay is theirs (the worst of each figure). */
function withFleetLoop(cpu: PhaseCpu, perProcess: readonly LoopDelayMs[]): PhaseCpu {
  if (perProcess.length === 0) return cpu;
  const worst = (f: (l: LoopDelayMs) => number): number => Math.max(...perProcess.map(f));
  return {
    ...cpu,
    loadgenLoopDelayMs: { p50: worst((l) => l.p50), p99: worst((l) => l.p99), max: worst((l) => l.max) },
    loadgenLoopDelayPerProcessMs: perProcess,
  };
}

// ---- phases ---------------------------------------------------------------------------------

interface PhaseContext {
  readonly label: string;
  readonly fleet: StormFleet;
  readonly service: RunningService;
  readonly servers: StormServers;
  readonly metricsPort: number;
  readonly maxSeconds: number;
  readonly log: (line: string) => void;
}

const failureSummary = (failures: Readonly<Record<string, number>>): string =>
  Object.entries(failures)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v.toLocaleString('en-US')}`)
    .join(', ');

const meterFor = (ctx: PhaseContext): CpuMeter =>
  cpuMeter(
    ctx.service.pid,
    ctx.servers.nodes.map((n) => n.pid),
    ctx.fleet.inProcess ? [] : ctx.fleet.pids,
  );

/**
 * Measures one connect phase from now (after calling `kick`, if given: a rolling restart's kick
 * resolves once the last server is back, and only then can every client be connected) until
 * every client is connected or the cap. `before` is the service's /metrics at the start.
 * Resolves with the phase and the window that was open before it.
 */
async function connectPhase(
  phase: ConnectPhase['phase'],
  ctx: PhaseContext,
  before: Promise<MetricSamples | undefined>,
  opts: { kick?: () => void | Promise<void>; meter?: CpuMeter } = {},
): Promise<{ result: ConnectPhase; previous: ClosedWindow }> {
  const { fleet } = ctx;
  const cpu = opts.meter ?? meterFor(ctx);
  const t0 = nowNs();
  const previous = await fleet.beginWindow(phase);
  const elapsed = (): number => Number(nowNs() - t0) / 1e9;
  const connectedAt: Record<string, number> = {};
  const checkpoints = CHECKPOINTS_S.filter((s) => s < ctx.maxSeconds).map((s) =>
    setTimeout(() => (connectedAt[`${s}s`] = fleet.connected), Math.max(0, s * 1000 - elapsed() * 1000)),
  );
  const goodput: GoodputSample[] = [];
  let counted = { attempts: 0, connects: 0 };
  // Each sample is aimed at its own multiple of 5 s from the start, so a late one (a busy event
  // loop) does not push the later ones back; its real time is kept.
  let progress: NodeJS.Timeout | undefined;
  const sampleNext = (): void => {
    const due = (goodput.length + 1) * GOODPUT_EVERY_S;
    progress = setTimeout(
      () => {
        const live = fleet.live();
        goodput.push({ s: elapsed(), connected: fleet.connected, connects: live.connects - counted.connects, attempts: live.attempts - counted.attempts });
        counted = { attempts: live.attempts, connects: live.connects };
        const state = `${int(fleet.connected)} / ${int(fleet.size)} connected, ${int(live.attempts)} attempts`;
        ctx.log(`  [${ctx.label} ${phase}] ${elapsed().toFixed(0)} s: ${state} (${failureSummary(live.failures) || 'no failures'})`);
        sampleNext();
      },
      Math.max(0, due * 1000 - elapsed() * 1000),
    );
  };
  sampleNext();
  await opts.kick?.();
  // Fleet processes report their counts every 50 ms: none may still count a client the kick disconnected.
  await fleet.refresh();
  const allAt = await fleet.waitAllConnected(Math.max(0, ctx.maxSeconds * 1000 - elapsed() * 1000));
  const seconds = allAt === null ? elapsed() : Math.max(0, Number(allAt - t0) / 1e9);
  const phaseCpu = cpu.end();
  // The clients go on; what they do from now on (also during the scrape below) is not this phase's.
  const closed = await fleet.beginWindow(`after ${phase}`);
  const w: FleetWindow = closed.window;
  for (const t of checkpoints) clearTimeout(t);
  clearTimeout(progress);
  // The last, shorter interval, up to the end of the phase.
  const inSamples = goodput.reduce((n, g) => n + g.connects, 0);
  const triedInSamples = goodput.reduce((n, g) => n + g.attempts, 0);
  if (seconds > (goodput.at(-1)?.s ?? 0) + 0.5)
    goodput.push({ s: seconds, connected: fleet.connected, connects: w.connects - inSamples, attempts: w.attempts - triedInSamples });
  // Checkpoints after the phase ended: everyone was connected by then.
  for (const s of CHECKPOINTS_S.filter((x) => x < ctx.maxSeconds)) connectedAt[`${s}s`] ??= fleet.connected;
  connectedAt['cap'] = fleet.connected;
  const outcome =
    allAt !== null ? `all ${int(fleet.size)} connected after ${dec(seconds)} s` : `cap: ${int(fleet.connected)} connected after ${dec(seconds, 0)} s`;
  ctx.log(`  [${ctx.label} ${phase}] ${outcome}, ${int(w.attempts)} attempts`);

  const delta = metricsDelta(await before, await scrapeMetrics(ctx.metricsPort));
  // An overloaded service reads its counters for the scrape late, and the allow answers it sends
  // meanwhile let clients in after the phase: count those clients against them too.
  const inDuringScrape = (await fleet.beginWindow(`settled ${phase}`)).window.connects;
  if (!delta) ctx.log(`  [${ctx.label} ${phase}] the service's /metrics did not answer: no service counters for this phase`);
  const allow = delta ? sumSeries(delta, 'oidc_callout_requests_total', { result: 'allow' }) : null;
  const serviceCounters: Record<string, number> = {};
  for (const [series, v] of delta ?? []) if (/shed|code/.test(series)) serviceCounters[series] = v;
  const [p50, p90, p99] = w.latency.percentiles(50, 90, 99).map((ns) => ns / 1e6);
  const result: ConnectPhase = {
    phase,
    seconds,
    allConnectedS: allAt !== null ? seconds : null,
    connectedAt,
    goodput,
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
    cpu: withFleetLoop(phaseCpu, closed.loopDelayMs),
    details: [...w.details],
  };
  return { result, previous };
}

/** Runs the storm against each selected nats-server; tokens are signed once for all of them. */
export async function runReconnectStorm(opts: ReconnectStormOptions): Promise<StormRun[]> {
  installHooks();
  const cluster = opts.cluster ?? 1;
  const plan = planOpenFiles({ clients: opts.clients, servers: cluster, clientsPerProcess: opts.clientsPerProcess });
  const sources = loopbackSources(opts.clients, plan.perServer, CLIENTS_PER_SOURCE);
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
    const where =
      plan.fleetProcesses === 1
        ? 'the clients in this process'
        : `the clients in ${plan.fleetProcesses} child processes of ${plan.fleetSizes.map(int).join(' / ')}`;
    opts.log(
      `signed ${tokens.length.toLocaleString('en-US')} RS256 tokens (${connectPayload(tokens[0]!).length} byte CONNECT) in ${((Date.now() - t0) / 1000).toFixed(1)} s; ` +
        `open files ${plan.nofile}; ${cluster} nats-server${cluster === 1 ? '' : 's'} (${int(plan.perServer)} clients each at most); ${where}; ` +
        (sources.length === 0 ? 'no source address bound (ports from connect())' : `source addresses ${sources[0]}..${sources.at(-1)}`),
    );
    // Not one of the clients' tokens: the readiness probe must leave the decision cache cold for them.
    const probeToken = await idp.sign({ ...benchClaims(opts.clients), exp: Math.floor(Date.now() / 1000) + TOKEN_LIFETIME_S });
    for (const bin of servers) runs.push(await stormOnce(bin, opts, plan, idp.issuer, tokens, probeToken, sources));
  } finally {
    await idp.stop();
  }
  return runs;
}

/**
 * The fleet of a storm against nats-server with no service subscribed, for `seconds`: every
 * attempt waits out the authorization timeout and fails, and clients retry as in the storm. Then
 * the fleet stops and the failing attempts still pending in nats-server are given time to end, so
 * the storm proper starts from a server with no callout in flight.
 */
async function unansweredPhase(
  label: string,
  servers: StormServers,
  fleetOptions: StormFleetOptions,
  plan: OpenFilesPlan,
  seconds: number,
  log: (line: string) => void,
): Promise<UnansweredPhase> {
  log(`\n${label}: ${int(plan.fleetSizes.reduce((a, b) => a + b, 0))} clients at once with no service answering, ${seconds} s`);
  const fleet = await startStormFleet(fleetOptions, plan.fleetSizes);
  try {
    const meter = cpuMeter(
      undefined,
      servers.nodes.map((n) => n.pid),
      fleet.inProcess ? [] : fleet.pids,
    );
    const t0 = nowNs();
    await fleet.beginWindow('unanswered');
    fleet.start();
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    const cpu = meter.end();
    const { window: w } = await fleet.beginWindow('after unanswered');
    const s = Number(nowNs() - t0) / 1e9;
    const result: UnansweredPhase = {
      seconds: s,
      attempts: w.attempts,
      failures: { ...w.failures },
      natsCpu: cpu.nats,
      natsMicrosPerAttempt: w.attempts === 0 ? Number.NaN : (cpu.nats * 1e6) / w.attempts,
      loadgenCpu: cpu.loadgen,
      machineBusy: cpu.machineBusy,
    };
    log(
      `  ${int(w.attempts)} attempts (${int(w.attempts / s)}/s; ${failureSummary(w.failures) || 'no failures'}), ${int(w.connects)} connected; ` +
        `nats-server ${dec(cpu.nats)} s of CPU (${dec(cpu.nats / s, 2)} cores, ${int(result.natsMicrosPerAttempt)} µs per attempt), ` +
        `load generator ${dec(cpu.loadgen)} s, machine ${int(cpu.machineBusy * 100)} % busy`,
    );
    return result;
  } finally {
    await fleet.stop();
    // The storm proper starts from fresh nats-servers: nothing of this phase in flight, and their
    // peak memory is the storm's alone.
    await Promise.all(servers.nodes.map((n) => n.stop()));
    await Promise.all(servers.nodes.map((n) => n.start()));
    if (servers.nodes.length > 1) await servers.waitForRoutes(15_000);
  }
}

async function stormOnce(
  bin: NatsServerBinary,
  opts: ReconnectStormOptions,
  plan: OpenFilesPlan,
  issuer: string,
  tokens: readonly string[],
  probeToken: string,
  sources: string[],
): Promise<StormRun> {
  const clusterSize = opts.cluster ?? 1;
  const restartMode = opts.restart ?? 'full';
  const label = `${bin.version}${opts.xkey ? '' : ' no-xkey'}${clusterSize > 1 ? ` x${clusterSize}` : ''}${restartMode === 'rolling' ? ' rolling' : ''}`;
  const work = makeWorkDir();
  const account = createAccount();
  const curve = createCurve();
  const natsConfig = calloutServerConfig({
    issuer: account.getPublicKey(),
    xkey: opts.xkey ? curve.getPublicKey() : undefined,
    password: 'bench-password',
    authTimeoutSeconds: opts.authTimeoutS ?? AUTH_TIMEOUT_S,
  });
  const servers = await startServers(bin.path, natsConfig, clusterSize);
  const ports = servers.nodes.map((n) => n.port);
  let service: RunningService | undefined;
  let fleet: StormFleet | undefined;
  const fleetOptions = {
    tokens,
    ports,
    sources,
    attemptTimeoutMs: (opts.clientTimeoutS ?? clientAttemptTimeoutS(opts.authTimeoutS ?? AUTH_TIMEOUT_S)) * 1000,
    retryMinMs: RETRY_MIN_MS,
    retryMaxMs: RETRY_MAX_MS,
  };
  try {
    const unanswered =
      opts.unansweredSeconds === undefined ? undefined : await unansweredPhase(label, servers, fleetOptions, plan, opts.unansweredSeconds, opts.log);
    const metricsPort = await freeServerPort(servers.ports);
    fleet = await startStormFleet(fleetOptions, plan.fleetSizes);
    writeFileSync(join(work, 'issuer.nk'), new TextDecoder().decode(account.getSeed()), { mode: 0o600 });
    writeFileSync(join(work, 'xkey.nk'), new TextDecoder().decode(curve.getSeed()), { mode: 0o600 });
    const doc = configDoc({
      natsUrl: ports.map((p) => `nats://127.0.0.1:${p}`),
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
    // Every node must reach the service (its subscriptions travel over the routes).
    for (const port of ports) await waitReady(port, probeToken, service);
    const serviceConnectionsPerServer = await servers.serviceConnections();
    if (serviceConnectionsPerServer) opts.log(`\n${label}: the service's connections per nats-server: ${serviceConnectionsPerServer.join(' / ')}`);
    const svc = service;
    const f = fleet;
    const ctx: PhaseContext = { label, fleet: f, service: svc, servers, metricsPort, maxSeconds: opts.maxSeconds, log: opts.log };

    opts.log(`\n${label}: cold start, ${int(f.size)} clients at once (cap ${opts.maxSeconds} s)`);
    const coldBefore = await scrapeMetrics(metricsPort);
    const { result: cold } = await connectPhase('cold', ctx, Promise.resolve(coldBefore), { kick: () => f.start() });

    opts.log(`${label}: permission check of ${int(f.connected)} connected clients`);
    await f.beginWindow('verify');
    const verifyCpu = meterFor(ctx);
    const checked = await f.verifyPermissions(VERIFY_TIMEOUT_MS);
    const verifyCpuEnd = verifyCpu.end();
    const counts = `${int(checked.correct)} of ${int(checked.checked)} right, ${int(checked.mismatches)} wrong, ${int(checked.notConnected)} not connected`;
    opts.log(`  ${counts} (${dec(checked.seconds)} s)`);
    for (const d of checked.details) opts.log(`    ${d}`);

    const natsColdPerServer: (number | null)[] = servers.nodes.map((n) => (n.pid === undefined ? null : mib(peakRssKiB(n.pid))));
    let restart: ConnectPhase;
    let verifyWindow: ClosedWindow;
    if (restartMode === 'full') {
      opts.log(
        `${label}: restarting ${clusterSize === 1 ? `nats-server on port ${ports[0]}` : `all ${clusterSize} nats-servers at once (ports ${ports.join(', ')})`}`,
      );
      verifyWindow = await f.beginWindow('down');
      const stopStart = nowNs();
      await Promise.all(servers.nodes.map((n) => n.stop()));
      const stopS = Number(nowNs() - stopStart) / 1e9;
      await Promise.all(servers.nodes.map((n) => n.start()));
      const downS = Number(nowNs() - stopStart) / 1e9;
      opts.log(`  stopped in ${stopS.toFixed(1)} s, accepting connections again ${downS.toFixed(1)} s after SIGTERM`);
      const routesStart = nowNs();
      const routesUp =
        clusterSize === 1
          ? undefined
          : servers.waitForRoutes(15_000).then(
              () => Number(nowNs() - routesStart) / 1e9,
              () => null,
            );
      // The phase starts now: clients reconnect on their own, the metrics scrape runs alongside.
      const { result, previous } = await connectPhase('restart', ctx, scrapeMetrics(metricsPort));
      restart = { ...result, stopS, downS, attemptsWhileDown: previous.window.attempts, ...(routesUp ? { routesUpS: await routesUp } : {}) };
    } else {
      opts.log(`${label}: restarting the ${clusterSize} nats-servers one after another (ports ${ports.join(', ')})`);
      const meter = meterFor(ctx);
      let stopS = 0;
      let downS = 0;
      let routesUp: Promise<number | null> | undefined;
      const phaseStart = nowNs();
      const kick = async (): Promise<void> => {
        for (const [k, node] of servers.nodes.entries()) {
          natsColdPerServer[k] = node.pid === undefined ? null : mib(peakRssKiB(node.pid));
          meter.retire(k);
          const stopStart = nowNs();
          await node.stop();
          stopS = Math.max(stopS, Number(nowNs() - stopStart) / 1e9);
          await node.start();
          meter.replace(k, node.pid);
        }
        downS = Number(nowNs() - phaseStart) / 1e9;
        opts.log(`  the last nats-server accepts connections again ${downS.toFixed(1)} s after the first SIGTERM (slowest stop ${stopS.toFixed(1)} s)`);
        routesUp =
          clusterSize === 1
            ? undefined
            : servers.waitForRoutes(15_000).then(
                () => Number(nowNs() - phaseStart) / 1e9,
                () => null,
              );
      };
      const { result, previous } = await connectPhase('restart', ctx, scrapeMetrics(metricsPort), { kick, meter });
      verifyWindow = previous;
      restart = { ...result, stopS, downS, ...(routesUp ? { routesUpS: await routesUp } : {}) };
    }
    const verify = { ...checked, cpu: withFleetLoop(verifyCpuEnd, verifyWindow.loopDelayMs) };

    const died = svc.exited() ? svc.stderr().slice(-2000) : undefined;
    const natsRestartPerServer = servers.nodes.map((n) => (n.pid === undefined ? null : mib(peakRssKiB(n.pid))));
    const loadgenPerProcess = f.inProcess ? [] : f.pids.map((pid) => mib(peakRssKiB(pid)));
    return {
      group: 'storm',
      server: bin.version,
      clients: f.size,
      xkey: opts.xkey,
      maxSeconds: opts.maxSeconds,
      cluster: clusterSize,
      restartMode,
      fleetProcesses: plan.fleetProcesses,
      fleetSizes: plan.fleetSizes,
      openFiles: plan.nofile,
      ...(serviceConnectionsPerServer ? { serviceConnectionsPerServer } : {}),
      sourceAddresses: sources.length,
      serviceConnections: opts.connections ?? DEFAULTS.nats.connections,
      serviceWorkers: typeof opts.workers === 'number' ? opts.workers : autoWorkers(availableParallelism()),
      authTimeoutS: opts.authTimeoutS ?? AUTH_TIMEOUT_S,
      clientTimeoutS: opts.clientTimeoutS ?? clientAttemptTimeoutS(opts.authTimeoutS ?? AUTH_TIMEOUT_S),
      ...(unanswered ? { unanswered } : {}),
      cold,
      verify,
      restart,
      peakRssMiB: {
        service: mib(peakRssKiB(svc.pid)),
        natsCold: sumOrNull(natsColdPerServer),
        natsRestart: sumOrNull(natsRestartPerServer),
        natsColdPerServer,
        natsRestartPerServer,
        loadgen: sumOrNull([mib(peakRssKiB(process.pid)), ...loadgenPerProcess]),
        loadgenPerProcess,
      },
      ...(died === undefined ? {} : { serviceDied: died }),
    };
  } finally {
    await fleet?.stop();
    await service?.stop();
    await servers.stop();
    if (opts.serviceLog) copyFileSync(join(work, 'service.log'), `/tmp/oidc-callout-storm-${label.replace(/\s+/g, '-')}.log`);
    removeWorkDir(work);
  }
}

// ---- report ---------------------------------------------------------------------------------

const runLabel = (r: StormRun): string =>
  `${r.server}${r.xkey ? '' : ' no-xkey'}${r.cluster > 1 ? ` x${r.cluster}` : ''}${r.restartMode === 'rolling' ? ' rolling' : ''}`;

/** One column per run and phase (cold, restart), one row per figure. */
export function stormTable(runs: readonly StormRun[]): string {
  const cols = runs.flatMap((r) => [r.cold, r.restart].map((p) => ({ run: r, p })));
  const header = ['', ...cols.map(({ run, p }) => `${runLabel(run)} ${p.phase}`)];
  const rows: string[][] = [];
  const row = (name: string, cell: (run: StormRun, p: ConnectPhase) => string): void => {
    rows.push([name, ...cols.map(({ run, p }) => cell(run, p))]);
  };
  // Rows only clusters and split fleets have, so that single-server runs print as before.
  const clustered = runs.some((r) => r.cluster > 1);
  const split = runs.some((r) => r.fleetProcesses > 1);
  row('clients', (r) => int(r.clients));
  if (clustered) row('nats-servers (restart)', (r) => `${r.cluster} (${r.restartMode})`);
  if (split) row('load generator processes', (r) => int(r.fleetProcesses));
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
  if (clustered) row('cpu s nats-server max per server', (_, p) => dec(maxOf(p.cpu.natsPerServer)));
  row('cpu s load generator (sys)', (_, p) => `${dec(p.cpu.loadgen)} (${dec(p.cpu.loadgenSystem)})`);
  if (split) row('cpu s load generator max per process', (_, p) => dec(maxOf(p.cpu.loadgenPerProcess.map((x) => x.cpu))));
  row('load generator loop delay p99 / max ms', (_, p) => `${dec(p.cpu.loadgenLoopDelayMs.p99, 0)} / ${dec(p.cpu.loadgenLoopDelayMs.max, 0)}`);
  row('box busy', (_, p) => `${Math.round(p.cpu.machineBusy * 100)} %`);
  row('nats-server stop s / down s', (_, p) => (p.stopS === undefined ? '' : `${dec(p.stopS)} / ${dec(p.downS)}`));
  row('attempts while down', (_, p) => (p.attemptsWhileDown === undefined ? '' : int(p.attemptsWhileDown)));
  if (clustered) row('routes up again after s', (_, p) => (p.routesUpS === undefined ? '' : p.routesUpS === null ? '> 15' : dec(p.routesUpS)));
  row('peak RSS MiB service', (r, p) => (p.phase === 'cold' ? '' : int(r.peakRssMiB.service)));
  row('peak RSS MiB nats-server', (r, p) => int(p.phase === 'cold' ? r.peakRssMiB.natsCold : r.peakRssMiB.natsRestart));
  if (clustered) {
    row('peak RSS MiB nats-server max per server', (r, p) =>
      int(maxOf(p.phase === 'cold' ? r.peakRssMiB.natsColdPerServer : r.peakRssMiB.natsRestartPerServer)),
    );
  }
  row('peak RSS MiB load generator', (r, p) => (p.phase === 'cold' ? '' : int(r.peakRssMiB.loadgen)));
  if (split) row('peak RSS MiB load generator max per process', (r, p) => (p.phase === 'cold' ? '' : int(maxOf(r.peakRssMiB.loadgenPerProcess))));
  return table(header, rows);
}

/**
 * Goodput over time: one row per 5 s of a connect phase, one column per run and phase, each cell
 * "connected clients at the end of the interval (successful connects in it)". Past the capacity
 * of the machine a storm that holds up keeps connecting clients at a steady rate; one that
 * collapses connects fewer and fewer while its attempts go on.
 */
export function goodputTable(runs: readonly StormRun[]): string {
  const cols = runs.flatMap((r) => [r.cold, r.restart].map((p) => ({ run: r, p })));
  const longest = Math.max(0, ...cols.map(({ p }) => p.goodput.length));
  const rows: string[][] = [];
  for (let i = 0; i < longest; i++) {
    const at = cols.map(({ p }) => p.goodput[i]);
    const nominal = (i + 1) * GOODPUT_EVERY_S;
    // A phase's last interval ends with the phase, and a busy event loop takes a sample late:
    // such a sample shows when it was taken.
    const cell = (g: GoodputSample | undefined): string =>
      g === undefined ? '' : `${int(g.connected)} (${int(g.connects)})${Math.abs(g.s - nominal) >= 0.5 ? ` at ${dec(g.s)} s` : ''}`;
    rows.push([`${nominal} s`, ...at.map(cell)]);
  }
  return table(['goodput: connected (connects in the interval)', ...cols.map(({ run, p }) => `${runLabel(run)} ${p.phase}`)], rows);
}

/** One row per run: the permission check between the two connect phases. */
export function verifyTable(runs: readonly StormRun[]): string {
  return table(
    ['permission check', 'checked', 'right', 'wrong', 'not connected', 'seconds', 'cpu s svc / nats / gen'],
    runs.map((r) => [
      runLabel(r),
      int(r.verify.checked),
      int(r.verify.correct),
      int(r.verify.mismatches),
      int(r.verify.notConnected),
      dec(r.verify.seconds),
      `${dec(r.verify.cpu.service)} / ${dec(r.verify.cpu.nats)} / ${dec(r.verify.cpu.loadgen)}`,
    ]),
  );
}
