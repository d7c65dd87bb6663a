/**
 * `npm run bench`: micro benchmarks, then the end-to-end connect storm; prints tables and
 * appends one JSON record per run to bench/results.jsonl. The reconnect storm runs only when
 * asked for (`--only storm`): it takes minutes and most of the machine. The 1,000-rule policy
 * benchmark runs only when asked for too (`--only policy`).
 *
 *   --only PART              run one part: micro, e2e, storm, policy, accounts, capacity or overload
 *   --duration SECONDS       measured time per e2e scenario (default 10)
 *   --concurrency N          e2e connects in flight (default 64); a comma list sweeps
 *   --server LIST            nats-server versions: newest (default), 2.10, 2.15, all; comma list
 *   --scenarios LIST         e2e scenarios (default plain,hit,miss,hit-info;
 *                            also hit-noxkey, miss-noxkey)
 *   --tokens N               distinct tokens for the cache-miss scenarios (default 20000)
 *   --warmup SECONDS         e2e warm-up per scenario (default 1)
 *   --micro-ms MS            minimum measured time per micro (and policy) benchmark (default 1000)
 *   --filter TEXT            only micro benchmarks whose name contains TEXT
 *   --workers N|auto         the service's worker threads (default: its own default, cores - 1)
 *   --profile DIR            write a V8 CPU profile of each service process to DIR
 *   --clients N              storm: clients with distinct tokens (default 10000)
 *   --max-seconds S          storm: cap of each connect phase (default 120)
 *   --cluster N              storm: N nats-servers in one cluster, client i on server i % N (default 1)
 *   --restart full|rolling   storm: restart every server at once (default) or one after another
 *   --client-timeout S       storm: the clients' own timeout for one attempt (default: the server's
 *                            authorization timeout + 3 s, at least 5; nats.go's default is 2)
 *   --unanswered S           storm: first run the fleet S seconds with no service answering (what
 *                            failing attempts cost nats-server alone)
 *   --clients-per-process N  storm: at most N clients per load generator process (default: what
 *                            the open-file limit allows; more clients run in child processes)
 *   --no-xkey                storm, overload: without xkey encryption of the callout traffic
 *   --overload-steps LIST    overload: offered loads as multiples of the measured capacity
 *                            (default 0.5,1,1.5,2,4,8; each for --duration seconds)
 *   --no-save                do not append to bench/results.jsonl
 *   --quick                  about a minute: plain, hit and miss for 5 s each, and a headline summary
 */
import { appendFileSync, existsSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { autoWorkers, DEFAULTS } from '../src/config.js';
import { DEFAULT_SCENARIOS, runConnectStorm } from './connect-storm.js';
import { e2eTable, machineBusyOver, microTable, type BenchResult } from './lib.js';
import { runMicro } from './micro.js';
import { ACCOUNTS, runAccountsScale } from './accounts-scale.js';
import { runServiceCapacity } from './service-capacity.js';
import { DEFAULT_OVERLOAD_STEPS, OVERLOAD_SERVICE_LOG, overloadTable, runServiceOverload } from './service-overload.js';
import { RULES, runPolicyScale } from './policy-scale.js';
import { clientAttemptTimeoutS, goodputTable, runReconnectStorm, STORM_AUTH_TIMEOUT_S, stormTable, verifyTable, type StormRun } from './reconnect-storm.js';

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find package.json');
    dir = parent;
  }
  return dir;
}

function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${JSON.stringify(value)}`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      duration: { type: 'string' },
      concurrency: { type: 'string' },
      server: { type: 'string' },
      scenarios: { type: 'string' },
      tokens: { type: 'string' },
      warmup: { type: 'string' },
      'micro-ms': { type: 'string' },
      filter: { type: 'string' },
      profile: { type: 'string' },
      clients: { type: 'string' },
      'max-seconds': { type: 'string' },
      cluster: { type: 'string' },
      restart: { type: 'string' },
      'clients-per-process': { type: 'string' },
      'no-xkey': { type: 'boolean' },
      connections: { type: 'string' },
      workers: { type: 'string' },
      'service-log': { type: 'string' },
      'auth-timeout': { type: 'string' },
      unanswered: { type: 'string' },
      'client-timeout': { type: 'string' },
      'overload-steps': { type: 'string' },
      'no-save': { type: 'boolean' },
      quick: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    const src = fileURLToPath(import.meta.url);
    process.stdout.write(`usage: npm run bench -- [options]   (see ${src.replace(/\/dist\//, '/').replace(/\.js$/, '.ts')})\n`);
    return;
  }
  if (values.only !== undefined && !['micro', 'e2e', 'storm', 'policy', 'accounts', 'capacity', 'overload'].includes(values.only)) {
    throw new Error('--only is micro, e2e, storm, policy, accounts, capacity or overload');
  }
  const list = (v: string | undefined, d: readonly string[]) =>
    v === undefined
      ? [...d]
      : v
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
  // --quick: about a minute, the headline figures only (a check of a change, not a measurement to publish).
  if (values.quick) {
    if (values.only !== undefined && values.only !== 'e2e') throw new Error('--quick runs the e2e part only');
    values.only = 'e2e';
    values.scenarios ??= 'plain,hit,miss';
    values.duration ??= '5';
  }
  const options = {
    only: values.only ?? 'all',
    durationS: positive('duration', values.duration, 10),
    concurrency: list(values.concurrency, ['64']).map((c) => Math.round(positive('concurrency', c, 64))),
    warmupS: positive('warmup', values.warmup, 1),
    servers: list(values.server, ['newest']),
    scenarios: list(values.scenarios, DEFAULT_SCENARIOS),
    missTokens: Math.round(positive('tokens', values.tokens, 20_000)),
    microMs: positive('micro-ms', values['micro-ms'], 1000),
    filter: values.filter,
    profileDir: values.profile === undefined ? undefined : resolve(values.profile),
    clients: Math.round(positive('clients', values.clients, 10_000)),
    maxSeconds: positive('max-seconds', values['max-seconds'], 120),
    cluster: Math.round(positive('cluster', values.cluster, 1)),
    restart: (values.restart ?? 'full') as 'full' | 'rolling',
    clientsPerProcess: values['clients-per-process'] === undefined ? undefined : Math.round(positive('clients-per-process', values['clients-per-process'], 1)),
    xkey: !values['no-xkey'],
    connections: values.connections === undefined ? undefined : Math.round(positive('connections', values.connections, 2)),
    workers: values.workers === undefined || values.workers === 'auto' ? values.workers : Math.round(positive('workers', values.workers, 1)),
    serviceLog: values['service-log'] as 'debug' | 'info' | 'warn' | 'error' | undefined,
    authTimeoutS: values['auth-timeout'] === undefined ? undefined : Math.round(positive('auth-timeout', values['auth-timeout'], 2)),
    clientTimeoutS: values['client-timeout'] === undefined ? undefined : positive('client-timeout', values['client-timeout'], 5),
    unansweredSeconds: values.unanswered === undefined ? undefined : positive('unanswered', values.unanswered, 20),
    overloadSteps: list(values['overload-steps'], DEFAULT_OVERLOAD_STEPS.map(String)).map((m) => positive('overload-steps', m, 1)),
  };
  if (options.serviceLog !== undefined && !['debug', 'info', 'warn', 'error'].includes(options.serviceLog))
    throw new Error('--service-log is debug, info, warn or error');
  if (!['full', 'rolling'].includes(options.restart)) throw new Error('--restart is full or rolling');
  const attemptS = options.clientTimeoutS ?? clientAttemptTimeoutS(options.authTimeoutS ?? STORM_AUTH_TIMEOUT_S);
  if (options.unansweredSeconds !== undefined && options.unansweredSeconds < 2 * attemptS) {
    // Shorter, and the window closes before most of its attempts have failed: their CPU would be counted, not their end.
    throw new Error(
      `--unanswered must be at least twice the clients' attempt timeout (${2 * clientAttemptTimeoutS(options.authTimeoutS ?? STORM_AUTH_TIMEOUT_S)} s)`,
    );
  }

  const cpu = cpus();
  const busy = await machineBusyOver(1000);
  const say = (s: string) => process.stdout.write(`${s}\n`);
  say(
    `node ${process.version}, ${cpu.length} x ${cpu[0]?.model ?? 'unknown cpu'}, load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  if (busy > 0.1) say(`WARNING: the machine was ${Math.round(busy * 100)} % busy before the run: numbers will be noisy`);

  const results: BenchResult[] = [];
  const storms: StormRun[] = [];
  if (options.only === 'micro' || options.only === 'all') {
    say(`\n== micro benchmarks (each >= ${options.microMs} ms after warm-up)`);
    const micro = await runMicro({ minMs: options.microMs, filter: options.filter, onResult: (r) => say(`  ${r.name}: ${Math.round(r.opsPerSec)} ops/s`) });
    results.push(...micro);
    say(`\n${microTable(micro)}`);
  }
  if (options.only === 'policy') {
    say(`\n== policy.decide with ${RULES} rules (each >= ${options.microMs} ms after warm-up)`);
    const policy = runPolicyScale({
      minMs: options.microMs,
      onResult: (r) => say(`  ${r.name}: p50 ${r.p50Us?.toFixed(1)} µs, p99 ${r.p99Us?.toFixed(1)} µs`),
    });
    results.push(...policy);
    say(`\n${microTable(policy)}`);
    say(
      `rules tried (main issuer): ${policy.map((r) => r.extra?.['rulesTried']).join(' / ')}; compiled by buildConfig in ${policy[0]?.extra?.['compileMs']} ms`,
    );
  }
  if (options.only === 'capacity') {
    const workers = options.workers === undefined || options.workers === 'auto' ? [1, availableParallelism()] : [options.workers as number];
    const requests = Math.round(positive('tokens', values.tokens, 4_000));
    say(`\n== the service alone: ${requests} recorded requests per run, ${options.concurrency[0]} in flight, workers ${workers.join(' and ')}`);
    const capacity = await runServiceCapacity({
      workers,
      requests,
      concurrency: options.concurrency[0]!,
      profileDir: options.profileDir,
      log: say,
      onResult: (r) =>
        say(
          `  ${r.name}: ${Math.round(r.opsPerSec)} authorizations/s, ${r.extra?.['serviceCpuUsPerAuthorization']} µs service CPU each, sender ${r.extra?.['senderCpuUsPerAuthorization']} µs; service reads/writes per authorization ${r.extra?.['serviceReadsPerAuthorization']}/${r.extra?.['serviceWritesPerAuthorization']}`,
        ),
    });
    results.push(...capacity);
  }
  if (options.only === 'overload') {
    const { overloadSteps, durationS, xkey, serviceLog, profileDir } = options;
    const workers = options.workers as number | 'auto' | undefined;
    say(
      `\n== the service alone past its capacity: open-loop steps of ${overloadSteps.join(', ')} x capacity, ${durationS} s each, xkey ${xkey ? 'on' : 'off'}, cache hits, workers ${workers ?? 'default'}`,
    );
    const overload = await runServiceOverload({
      steps: overloadSteps,
      durationS,
      xkey,
      workers,
      serviceLog,
      profileDir,
      log: say,
      onResult: (r) =>
        say(
          r.extra?.['multiple'] === undefined
            ? `  capacity: ${Math.round(r.opsPerSec)}/s`
            : `  ${r.extra['multiple']}x: offered ${r.extra['offeredPerS']}/s, goodput ${r.extra['goodPerS']}/s, late ${r.extra['latePerS']}/s, no answer ${r.extra['noAnswer']}; CPU s service ${r.extra['serviceCpuS']}, nats-server ${r.extra['natsCpuS']}, sender ${r.extra['senderCpuS']}, machine ${Math.round(Number(r.extra['machineBusy']) * 100)} % busy`,
        ),
    });
    results.push(...overload);
    say(`\n${overloadTable(overload)}`);
    say('goodput: right allow answers that arrived within 2 s of their request being sent (nats-server gives up after 2 s);');
    say('late: answers after that; shed: requests the service dropped unanswered (its oidc_callout_shed_total);');
    say('svc µs/answer: service CPU from the start of the step until it had decided every request, per answer; svc µs/drop: that CPU');
    say('  beyond what its answers cost in the capacity run, per request not answered; sender lag: its event-loop delay while sending;');
    say('behind: how late the sender sent a batch against its schedule (at most); decided after: seconds after the last request');
    say('  was sent until the service had answered or dropped every request of the step (how far behind its reading was)');
    if (serviceLog) say(`the service's log: ${OVERLOAD_SERVICE_LOG}`);
    const wrong = overload.reduce((sum, r) => sum + (typeof r.extra?.['wrong'] === 'number' ? r.extra['wrong'] : 0), 0);
    if (wrong > 0) throw new Error(`${wrong} answers were wrong (did not open, named another user key, or refused)`);
  }
  if (options.only === 'accounts') {
    say(`\n== operator mode, ${ACCOUNTS} accounts (each >= ${options.microMs} ms after warm-up)`);
    const accounts = runAccountsScale({
      minMs: options.microMs,
      onResult: (r) => say(`  ${r.name}: p50 ${r.p50Us?.toFixed(1)} µs, p99 ${r.p99Us?.toFixed(1)} µs (configuration loaded in ${r.extra?.['loadMs']} ms)`),
    });
    results.push(...accounts);
    say(`\n${microTable(accounts)}`);
  }
  if (options.only === 'e2e' || options.only === 'all') {
    say(`\n== connect storm: ${options.concurrency.join(', ')} in flight, ${options.durationS} s per scenario (+${options.warmupS} s warm-up)`);
    const e2e = await runConnectStorm({
      durationS: options.durationS,
      workers: options.workers as number | 'auto' | undefined,
      concurrency: options.concurrency,
      warmupS: options.warmupS,
      servers: options.servers,
      scenarios: options.scenarios,
      missTokens: options.missTokens,
      profileDir: options.profileDir,
      log: say,
      onResult: (r) =>
        say(
          `  ${r.extra?.['server']} ${r.name}, ${r.extra?.['concurrency']} in flight: ${Math.round(r.opsPerSec)} connects/s, ${r.extra?.['success']} ok, ${r.extra?.['failure']} failed`,
        ),
    });
    results.push(...e2e);
    say(`\n${e2eTable(e2e)}`);
    if (values.quick) say(`\n${headline(e2e)}`);
    say('svc/nats/gen µs/c: CPU µs per connect of the service process, nats-server, the load generator;');
    say('box busy: whole machine; other: busy CPU not charged to those three (loopback softirq, other jobs)');
  }
  if (options.only === 'storm') {
    const {
      clients,
      maxSeconds,
      servers,
      xkey,
      connections,
      serviceLog,
      profileDir,
      authTimeoutS,
      unansweredSeconds,
      clientTimeoutS,
      cluster,
      restart,
      clientsPerProcess,
    } = options;
    const workers = options.workers as number | 'auto' | undefined;
    const conns = connections === undefined ? `${DEFAULTS.nats.connections} (default)` : String(connections);
    const workersShown = workers === undefined || workers === 'auto' ? `${autoWorkers(availableParallelism())} (auto)` : String(workers);
    say(
      `\n== reconnect storm: ${clients} clients, distinct tokens, retry after 250 ms-2 s, cap ${maxSeconds} s per phase, xkey ${xkey ? 'on' : 'off'}, service connections ${conns}, workers ${workersShown}, authorization timeout ${authTimeoutS ?? STORM_AUTH_TIMEOUT_S} s, client timeout ${clientTimeoutS ?? clientAttemptTimeoutS(authTimeoutS ?? STORM_AUTH_TIMEOUT_S)} s` +
        (cluster > 1 ? `, ${cluster} nats-servers in a cluster, ${restart} restart` : ''),
    );
    storms.push(
      ...(await runReconnectStorm({
        clients,
        maxSeconds,
        servers,
        xkey,
        cluster,
        restart,
        clientsPerProcess,
        connections,
        workers,
        serviceLog,
        profileDir,
        authTimeoutS,
        unansweredSeconds,
        clientTimeoutS,
        log: say,
      })),
    );
    say(`\n${stormTable(storms)}`);
    say('late answers: allow answers the service sent minus clients that got in (answers nats-server no longer waited for);');
    const t = authTimeoutS ?? STORM_AUTH_TIMEOUT_S;
    say(`failed: auth_violation = refused by the service (see its reject counters) or no callout answer within the ${t} s nats-server waits;`);
    say(
      `  auth_timeout = the ${t} s authorization timer of the connection ran out first; timeout_* = nothing within ${clientAttemptTimeoutS(t)} s on the client side:`,
    );
    say('  tcp = connection not established (listen backlog full), info = no INFO, answer = CONNECT got neither PONG nor -ERR');
    say(`\n${verifyTable(storms)}`);
    say(`\n${goodputTable(storms)}`);
  }

  if (!values['no-save']) {
    const record = {
      date: new Date().toISOString(),
      node: process.version,
      cpu: cpu[0]?.model ?? 'unknown',
      cores: cpu.length,
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      machineBusyBefore: Math.round(busy * 1000) / 1000,
      options: { ...options, profileDir: options.profileDir ?? null, filter: options.filter ?? null },
      results: [...results, ...storms],
    };
    const file = join(repoRoot(), 'bench', 'results.jsonl');
    appendFileSync(file, `${JSON.stringify(record)}\n`);
    say(`\nappended to ${file}`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);

/** --quick's summary: connect rates against plain token auth, and the service's CPU per authorization. */
function headline(results: readonly BenchResult[]): string {
  const byLabel = (kind: string) => results.find((r) => r.name.includes(kind));
  const num = (r: BenchResult | undefined, k: string) => (typeof r?.extra?.[k] === 'number' ? (r.extra[k] as number) : undefined);
  const plain = byLabel('plain token');
  const line = (label: string, r: BenchResult | undefined) =>
    r
      ? `${label}: ${Math.round(r.opsPerSec)} connects/s (${num(r, 'vsPlain')?.toFixed(2) ?? '-'}x plain), service ${Math.round(num(r, 'serviceCpuUsPerConnect') ?? Number.NaN)} µs CPU per authorization`
      : `${label}: not run`;
  return [
    `headline: plain token auth ${plain ? Math.round(plain.opsPerSec) : '-'} connects/s`,
    line('  cache hit', byLabel('cache hit')),
    line('  cache miss', byLabel('cache miss')),
  ].join('\n');
}
