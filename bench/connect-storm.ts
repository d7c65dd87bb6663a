/**
 * End-to-end connect storm: a real nats-server with auth_callout, the service as its own process
 * (`node dist/src/main.js run --config FILE`, exactly as deployed), and a raw-protocol load
 * generator in this process keeping `concurrency` connects in flight for `duration` seconds.
 *
 * CPU is read from /proc/<pid>/stat (utime + stime, all threads) for the service and for
 * nats-server, and with process.cpuUsage() for the load generator, just before and just after
 * the measured window, and divided by the connects completed in it.
 *
 * Scenarios:
 *   plain        nats-server `authorization { token }`, no callout: the baseline
 *   hit          callout, xkey on, clients reuse 16 tokens (reconnect storm: decision cache hits)
 *   miss         callout, xkey on, every connect a distinct pre-signed token (cache misses)
 *   hit-info     like hit with `log.level: info` (one JSON line per decision, to a file)
 *   hit-noxkey   like hit without xkey;  miss-noxkey: like miss without xkey
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { startNatsServer, type RunningNats } from '../test/helpers/nats-server.js';
import { startLocalIssuer, type LocalIssuer } from '../test/helpers/local-issuer.js';
import { configDoc, signTokens } from './fixtures.js';
import { machineJiffies, processCpuMicros, type BenchResult } from './lib.js';
import { connectPayload, storm, type StormResult } from './loadgen.js';
import { installHooks, makeWorkDir, pickServers, removeWorkDir, startService, waitReady, type RunningService } from './processes.js';
import { calloutServerConfig } from '../test/helpers/callout-fixture.js';

export interface ScenarioSpec {
  readonly id: string;
  readonly label: string;
  readonly kind: 'plain' | 'hit' | 'miss';
  readonly xkey: boolean;
  readonly logLevel: 'error' | 'info';
}

export const SCENARIOS: readonly ScenarioSpec[] = [
  { id: 'plain', label: '(c) plain token, no callout', kind: 'plain', xkey: false, logLevel: 'error' },
  { id: 'hit', label: '(a) callout, cache hit, xkey', kind: 'hit', xkey: true, logLevel: 'error' },
  { id: 'miss', label: '(b) callout, cache miss, xkey', kind: 'miss', xkey: true, logLevel: 'error' },
  { id: 'hit-info', label: '(a) + log.level info', kind: 'hit', xkey: true, logLevel: 'info' },
  { id: 'hit-noxkey', label: '(a) without xkey', kind: 'hit', xkey: false, logLevel: 'error' },
  { id: 'miss-noxkey', label: '(b) without xkey', kind: 'miss', xkey: false, logLevel: 'error' },
];

export const DEFAULT_SCENARIOS = ['plain', 'hit', 'miss', 'hit-info'];

export interface E2eOptions {
  readonly durationS: number;
  /** `workers` of the service; its default when undefined. */
  readonly workers?: number | 'auto' | undefined;
  /** Connects in flight; one measurement per value. */
  readonly concurrency: readonly number[];
  readonly warmupS: number;
  /** Version prefixes ('2.15', '2.10'), 'newest' or 'all'. */
  readonly servers: readonly string[];
  readonly scenarios: readonly string[];
  /** Distinct tokens pre-signed for the cache-miss scenarios. */
  readonly missTokens: number;
  /** Write a V8 CPU profile of the service process into this directory. */
  readonly profileDir?: string | undefined;
  readonly log: (line: string) => void;
  readonly onResult?: (r: BenchResult) => void;
}

const HIT_TOKENS = 16;

function natsConfig(spec: ScenarioSpec, plainToken: string, issuerPub: string, xkeyPub: string): string {
  if (spec.kind === 'plain') {
    return `max_control_line: 65536\nauthorization {\n  timeout: 2\n  token: "${plainToken}"\n}\n`;
  }
  return calloutServerConfig({ issuer: issuerPub, xkey: spec.xkey ? xkeyPub : undefined, password: 'bench-password', authTimeoutSeconds: 2 });
}

interface Window {
  readonly storm: StormResult;
  readonly serviceCpuUs: number | undefined;
  readonly natsCpuUs: number;
  readonly loadgenCpuUs: number;
  readonly machineBusy: number;
  readonly steal: number;
}

async function measuredStorm(nats: RunningNats, servicePid: number | undefined, run: () => Promise<StormResult>): Promise<Window> {
  const svc0 = servicePid === undefined ? 0 : processCpuMicros(servicePid);
  const nats0 = processCpuMicros(nats.pid);
  const gen0 = process.cpuUsage();
  const box0 = machineJiffies();
  const result = await run();
  const box1 = machineJiffies();
  const gen1 = process.cpuUsage(gen0);
  const nats1 = processCpuMicros(nats.pid);
  const svc1 = servicePid === undefined ? 0 : processCpuMicros(servicePid);
  return {
    storm: result,
    serviceCpuUs: servicePid === undefined ? undefined : svc1 - svc0,
    natsCpuUs: nats1 - nats0,
    loadgenCpuUs: gen1.user + gen1.system,
    machineBusy: box1.total === box0.total ? 0 : (box1.busy - box0.busy) / (box1.total - box0.total),
    steal: box1.total === box0.total ? 0 : (box1.steal - box0.steal) / (box1.total - box0.total),
  };
}

function toResult(spec: ScenarioSpec, server: string, concurrency: number, w: Window, plain: { rate: number; cpu: number } | undefined): BenchResult {
  const s = w.storm;
  const seconds = Number(s.wallNs) / 1e9;
  const done = Math.max(1, s.success + s.failure);
  const [p50, p90, p99] = s.latency.percentiles(50, 90, 99);
  const totalCpu = (w.serviceCpuUs ?? 0) + w.natsCpuUs + w.loadgenCpuUs;
  const rate = s.success / seconds;
  const extra: Record<string, number | string | boolean> = {
    scenario: spec.id,
    server,
    concurrency,
    success: s.success,
    failure: s.failure,
    outcomes: JSON.stringify(s.outcomes),
    natsCpuUsPerConnect: w.natsCpuUs / done,
    loadgenCpuUsPerConnect: w.loadgenCpuUs / done,
    totalCpuUsPerConnect: totalCpu / done,
    machineBusy: w.machineBusy,
    // Busy CPU of the machine not charged to our three processes: kernel softirq work for
    // loopback TCP, and anybody else's work (a noisy neighbour makes the run suspect).
    unattributedBusy: Math.max(0, w.machineBusy - totalCpu / 1e6 / (cpus().length * seconds)),
    steal: w.steal,
    exhausted: s.exhausted,
    xkey: spec.xkey,
    logLevel: spec.kind === 'plain' ? '-' : spec.logLevel,
  };
  if (w.serviceCpuUs !== undefined) extra['serviceCpuUsPerConnect'] = w.serviceCpuUs / done;
  if (plain && spec.kind !== 'plain') {
    extra['vsPlain'] = rate / plain.rate;
    extra['cpuVsPlain'] = totalCpu / done / plain.cpu;
  }
  if (s.details.length) extra['failureDetails'] = s.details.join(' | ');
  return {
    group: 'e2e',
    name: spec.label,
    ops: s.success,
    seconds,
    opsPerSec: rate,
    meanUs: (seconds * 1e6) / Math.max(1, s.success),
    p50Us: p50! / 1000,
    p90Us: p90! / 1000,
    p99Us: p99! / 1000,
    extra,
  };
}

export async function runConnectStorm(opts: E2eOptions): Promise<BenchResult[]> {
  installHooks();
  const specs = opts.scenarios.map((id) => {
    const s = SCENARIOS.find((x) => x.id === id);
    if (!s) throw new Error(`unknown scenario ${id} (have ${SCENARIOS.map((x) => x.id).join(', ')})`);
    return s;
  });
  // The baseline first, so the others can be compared with it.
  specs.sort((a, b) => (a.kind === 'plain' ? 0 : 1) - (b.kind === 'plain' ? 0 : 1));
  const servers = await pickServers(opts.servers);
  const results: BenchResult[] = [];
  const idp: LocalIssuer = await startLocalIssuer({ alg: 'RS256' });
  try {
    const needMiss = specs.some((s) => s.kind === 'miss');
    const t0 = Date.now();
    const hitTokens = await signTokens(idp, HIT_TOKENS, 0);
    const hitPayloads = hitTokens.map(connectPayload);
    const warmMiss = needMiss ? (await signTokens(idp, 2000, 1_000_000)).map(connectPayload) : [];
    const missPayloads = needMiss ? (await signTokens(idp, opts.missTokens, 2_000_000)).map(connectPayload) : [];
    opts.log(
      `signed ${hitTokens.length + warmMiss.length + missPayloads.length} RS256 tokens (${hitPayloads[0]!.length} byte CONNECT) in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    // Same length as the OIDC tokens, so CONNECT parsing costs the server the same.
    const plainToken = randomBytes(hitTokens[0]!.length).toString('base64url').slice(0, hitTokens[0]!.length);
    const plainPayload = connectPayload(plainToken);

    for (const bin of servers) {
      const plain = new Map<number, { rate: number; cpu: number }>();
      for (const spec of specs) {
        const work = makeWorkDir();
        const account = createAccount();
        const curve = createCurve();
        const nats = await startNatsServer({ bin: bin.path, config: natsConfig(spec, plainToken, account.getPublicKey(), curve.getPublicKey()) });
        let service: RunningService | undefined;
        try {
          if (spec.kind !== 'plain') {
            writeFileSync(join(work, 'issuer.nk'), new TextDecoder().decode(account.getSeed()), { mode: 0o600 });
            writeFileSync(join(work, 'xkey.nk'), new TextDecoder().decode(curve.getSeed()), { mode: 0o600 });
            const doc = configDoc({
              natsUrl: nats.url,
              issuer: idp.issuer,
              issuerSeed: { file: 'issuer.nk' },
              xkeySeed: spec.xkey ? { file: 'xkey.nk' } : undefined,
              logLevel: spec.logLevel,
              workers: opts.workers,
            });
            const configFile = join(work, 'oidc-callout.yaml');
            writeFileSync(configFile, `# written by bench/connect-storm.ts (JSON is YAML)\n${JSON.stringify(doc, null, 2)}\n`);
            service = await startService(configFile, join(work, 'service.log'), opts.profileDir);
            await waitReady(nats.port, hitTokens[0]!, service);
          }
          // Miss tokens are handed out once per service process (its cache starts empty).
          let missNext = 0;
          let warmNext = 0;
          const supply = (kind: ScenarioSpec['kind'], warm: boolean): ((n: number) => Buffer | undefined) => {
            if (kind === 'plain') return () => plainPayload;
            if (kind === 'hit') return (n) => hitPayloads[n % hitPayloads.length];
            return warm ? () => warmMiss[warmNext++] : () => missPayloads[missNext++];
          };
          for (const concurrency of opts.concurrency) {
            const base = { port: nats.port, concurrency };
            await storm({ ...base, durationMs: opts.warmupS * 1000, payload: supply(spec.kind, true) });
            const w = await measuredStorm(nats, service?.pid, () => storm({ ...base, durationMs: opts.durationS * 1000, payload: supply(spec.kind, false) }));
            const r = toResult(spec, bin.version, concurrency, w, plain.get(concurrency));
            if (spec.kind === 'plain') plain.set(concurrency, { rate: r.opsPerSec, cpu: r.extra!['totalCpuUsPerConnect'] as number });
            results.push(r);
            opts.onResult?.(r);
            const s = w.storm;
            if (s.failure > 0) opts.log(`  ${spec.id}: ${s.failure} failures: ${JSON.stringify(s.outcomes)} ${s.details.join(' | ')}`);
            if (s.exhausted) opts.log(`  ${spec.id}: the distinct tokens ran out after ${(Number(s.wallNs) / 1e9).toFixed(1)} s (raise --tokens)`);
          }
          if (spec.logLevel === 'info' && spec.kind !== 'plain') {
            const lines = readFileSync(join(work, 'service.log'), 'utf8').split('\n').length - 1;
            opts.log(`  ${spec.id}: service wrote ${lines} log lines`);
          }
        } finally {
          await service?.stop();
          await nats.stop();
          removeWorkDir(work);
        }
      }
    }
  } finally {
    await idp.stop();
  }
  return results;
}
