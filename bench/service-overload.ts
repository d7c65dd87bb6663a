/**
 * `npm run bench -- --only overload`: does the service's goodput hold past its capacity, or does
 * it collapse? The service alone behind a plain nats-server (service-alone.ts), xkey on (or off),
 * cache hits (8 shared tokens, so a request costs the service what a hit costs).
 *
 * 1. capacity: recorded requests, 64 in flight as request/reply, for a few seconds (as
 *    `--only capacity` measures it);
 * 2. steps: open-loop constant rates of `steps` x that capacity (default 0.5, 1, 1.5, 2, 4, 8),
 *    `durationS` each. Requests are published from a timer at the scheduled rate, each with a
 *    reply subject under one wildcard subscription of the sender, so nothing limits how many are
 *    in flight (nats-server does not wait for one answer before issuing the next request either).
 *
 * A request looks like a fresh one of nats-server's: `iat` = the second it is sent in and
 * `exp = iat + 2` (nats-server's default authorization timeout), each with a user nkey of its
 * own. Signing them while sending would take the sender's CPU from the schedule, so each step's
 * requests are recorded before the step starts, stamped with the seconds they are scheduled in.
 *
 * nats-server waits `authorization.timeout` from the moment it issued a request; the sender's
 * send time + 2,000 ms stands for that deadline. An answer is good when it arrives before it and
 * is right (opens with the server's xkey, names the request's user nkey, allows); one that arrives
 * after it is late (nats-server would have refused the client already).
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AUTH_SUBJECT } from '../src/runner.js';
import { fakeServer } from '../test/helpers/auth-request.js';
import { freeServerPort } from '../test/helpers/free-port.js';
import { startLocalIssuer } from '../test/helpers/local-issuer.js';
import type { RunningNats } from '../test/helpers/nats-server.js';
import { signTokens } from './fixtures.js';
import { type BenchResult, machineJiffies, processCpuMicros, Samples, table } from './lib.js';
import { makeWorkDir, pickServers, type RunningService, removeWorkDir, startService } from './processes.js';
import { metricsDelta, scrapeMetrics, sumSeries } from './prometheus.js';
import {
  closedLoop,
  logTail,
  type RecordedRequest,
  RequestRecorder,
  SENDER_USER,
  startPlainNats,
  untilAnswering,
  writeServiceFiles,
  xkeyHeader,
} from './service-alone.js';

export const DEFAULT_OVERLOAD_STEPS = [0.5, 1, 1.5, 2, 4, 8];
/** Requests recorded for all steps together at most (memory, and seconds of recording). */
export const MAX_OVERLOAD_REQUESTS = 200_000;

export interface OverloadOptions {
  /** Offered load of each step, as a multiple of the measured capacity. */
  readonly steps: readonly number[];
  /** Seconds each step offers its load (shortened alike for all steps beyond MAX_OVERLOAD_REQUESTS). */
  readonly durationS: number;
  readonly xkey: boolean;
  /** `workers` of the service; its default when undefined. */
  readonly workers?: number | 'auto' | undefined;
  /** The service's log level (`debug` adds its `scheduler` line per second); the log is then kept. */
  readonly serviceLog?: 'debug' | 'info' | 'warn' | 'error' | undefined;
  readonly profileDir?: string | undefined;
  readonly log: (line: string) => void;
  readonly onResult?: (r: BenchResult) => void;
}

const HIT_TOKENS = 8;
/** nats-server's default `authorization.timeout`: it gives up on a request this long after issuing it. */
const AUTH_TIMEOUT_MS = 2_000;
const CAPACITY_IN_FLIGHT = 64;
const CAPACITY_SECONDS = 3;
/** Recorded for the capacity run: enough for 3 s at the fastest rate seen here (about 4,000/s). */
const CAPACITY_REQUESTS = 12_000;
/** The sender's timer: requests go out in batches this often. */
const TICK_MS = 2;
/** How long after a step's last request the service may take to decide them all. */
const SETTLE_MAX_MS = 60_000;
const SETTLE_POLL_MS = 250;
/** Once it has: answers still on their way arrive within this. */
const LAST_ANSWERS_MS = 300;
const REPLY_PREFIX = 'bench.overload';
/** Where the service's log is kept when `serviceLog` is set. */
export const OVERLOAD_SERVICE_LOG = '/tmp/oidc-callout-overload.log';

export async function runServiceOverload(opts: OverloadOptions): Promise<BenchResult[]> {
  const [bin] = await pickServers(['newest']);
  const idp = await startLocalIssuer();
  const work = makeWorkDir();
  const results: BenchResult[] = [];
  const xkeyLabel = `xkey ${opts.xkey ? 'on' : 'off'}`;
  const nats = await startPlainNats(bin!.path);
  let service: RunningService | undefined;
  let sender: NatsConnection | undefined;
  try {
    const tokens = await signTokens(idp, HIT_TOKENS, 0);
    const metricsPort = await freeServerPort();
    const files = writeServiceFiles({
      work,
      natsUrl: nats.url,
      issuer: idp.issuer,
      xkey: opts.xkey,
      workers: opts.workers,
      logLevel: opts.serviceLog,
      httpListen: `127.0.0.1:${metricsPort}`,
    });
    const recorder = new RequestRecorder(fakeServer(), files.serviceXkey);
    // Recorded before the service starts (the local IdP, in this process, must be free to answer
    // its key fetch), long-lived: the run is closed-loop and none must expire in it.
    const r0 = performance.now();
    const capacityRequests = Array.from({ length: CAPACITY_REQUESTS }, (_, i) => recorder.record(tokens[i % HIT_TOKENS]!, { lifetimeS: 600 }));
    const recordMs = (performance.now() - r0) / CAPACITY_REQUESTS;
    service = await startService(files.configFile, files.logFile, opts.profileDir);
    sender = await connect({ servers: nats.url, ...SENDER_USER });
    const headers = opts.xkey ? xkeyHeader(recorder.box.publicKey) : undefined;

    // 1. Capacity, closed loop (the warm-up caches the shared tokens and teaches the service the clock).
    const s = sender;
    const ask = async (i: number): Promise<void> => {
      const r = capacityRequests[i]!;
      const msg = await s.request(AUTH_SUBJECT, r.data, { timeout: 10_000, ...(headers ? { headers } : {}) });
      const wrong = recorder.check(msg.data, r.userNkey);
      if (wrong) throw new Error(`${wrong}; the service's last log lines:\n${logTail(files.logFile, 3)}`);
    };
    await untilAnswering(() => ask(0), files.logFile);
    await closedLoop(1, CAPACITY_IN_FLIGHT * 2, CAPACITY_IN_FLIGHT, ask);
    const cpu0 = processCpuMicros(service.pid);
    const t0 = performance.now();
    const done = await closedLoop(CAPACITY_IN_FLIGHT * 2, CAPACITY_REQUESTS, CAPACITY_IN_FLIGHT, ask, t0 + CAPACITY_SECONDS * 1000);
    const capacitySeconds = (performance.now() - t0) / 1000;
    const capacity = done / capacitySeconds;
    const capacityCpuUsPerAnswer = (processCpuMicros(service.pid) - cpu0) / done;
    const capacityResult: BenchResult = {
      group: 'e2e',
      name: `service overload: capacity, ${CAPACITY_IN_FLIGHT} in flight, ${xkeyLabel}`,
      ops: done,
      seconds: capacitySeconds,
      opsPerSec: capacity,
      meanUs: (capacitySeconds * 1e6) / done,
      extra: { serviceCpuUsPerAnswer: Math.round(capacityCpuUsPerAnswer), xkey: opts.xkey },
    };
    results.push(capacityResult);
    opts.onResult?.(capacityResult);

    // 2. The steps, open loop.
    const planned = opts.steps.reduce((sum, m) => sum + m * capacity * opts.durationS, 0);
    const scale = Math.min(1, MAX_OVERLOAD_REQUESTS / planned);
    const durationS = opts.durationS * scale;
    if (scale < 1) {
      opts.log(
        `  ${Math.round(planned).toLocaleString('en-US')} requests would exceed the cap of ${MAX_OVERLOAD_REQUESTS.toLocaleString('en-US')}: each step offers its load for ${durationS.toFixed(1)} s instead of ${opts.durationS} s`,
      );
    }
    const answers = new Answers(sender);
    for (const [index, multiple] of opts.steps.entries()) {
      const step = await runStep({
        index,
        multiple,
        rate: multiple * capacity,
        durationS,
        recorder,
        tokens,
        recordMs,
        headers,
        sender,
        answers,
        service,
        nats,
        metricsPort,
        opts,
      });
      const result: BenchResult = {
        group: 'e2e',
        name: `service overload: ${multiple}x capacity, ${xkeyLabel}`,
        ops: step.good,
        seconds: step.seconds,
        opsPerSec: step.good / step.seconds,
        meanUs: (step.seconds * 1e6) / step.good,
        ...(step.p50Ms === undefined ? {} : { p50Us: step.p50Ms * 1000, p99Us: step.p99Ms! * 1000 }),
        extra: {
          ...step.extra,
          // What a request dropped unanswered cost the service, taking an answer to cost what it did
          // in the capacity run: the step's service CPU beyond its answers, per request not answered.
          serviceCpuUsPerDrop: step.extra['noAnswer']
            ? Math.round((step.extra['serviceCpuUs']! - step.extra['answers']! * capacityCpuUsPerAnswer) / step.extra['noAnswer'])
            : Number.NaN,
          capacity: Math.round(capacity),
          xkey: opts.xkey,
        },
      };
      results.push(result);
      opts.onResult?.(result);
    }
    await answers.close();
  } finally {
    await sender?.close();
    await service?.stop();
    await nats.stop();
    await idp.stop();
    if (opts.serviceLog) {
      try {
        copyFileSync(join(work, 'service.log'), OVERLOAD_SERVICE_LOG);
      } catch {
        // The service never started: there is no log to keep.
      }
    }
    removeWorkDir(work);
  }
  return results;
}

/**
 * The answers of the current step, on one wildcard subscription: reply subject
 * `bench.overload.<step>.<request>`, arrival time and payload per request. Answers to an earlier
 * step are counted as strays.
 */
class Answers {
  readonly #sub;
  step = -1;
  at = new Float64Array(0);
  data: (Uint8Array | undefined)[] = [];
  duplicates = 0;
  strays = 0;

  constructor(nc: NatsConnection) {
    this.#sub = nc.subscribe(`${REPLY_PREFIX}.>`, {
      callback: (err, msg) => {
        if (err) return;
        const now = performance.now();
        const [step, k] = msg.subject
          .slice(REPLY_PREFIX.length + 1)
          .split('.')
          .map(Number) as [number, number];
        if (step !== this.step || !(k < this.at.length)) {
          this.strays++;
          return;
        }
        if (this.data[k] !== undefined) {
          this.duplicates++;
          return;
        }
        this.at[k] = now;
        this.data[k] = msg.data;
      },
    });
  }

  /** Starts collecting the answers of step `step`, of `count` requests. */
  reset(step: number, count: number): void {
    this.step = step;
    this.at = new Float64Array(count);
    this.data = new Array(count);
    this.duplicates = 0;
    this.strays = 0;
  }

  async close(): Promise<void> {
    await this.#sub.drain();
  }
}

interface StepOutcome {
  readonly good: number;
  /** Seconds the load was offered (the schedule, or longer when the sender fell behind). */
  readonly seconds: number;
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  readonly extra: Record<string, number>;
}

async function runStep(o: {
  index: number;
  multiple: number;
  rate: number;
  durationS: number;
  recorder: RequestRecorder;
  tokens: readonly string[];
  recordMs: number;
  headers: ReturnType<typeof xkeyHeader> | undefined;
  sender: NatsConnection;
  answers: Answers;
  service: RunningService;
  nats: RunningNats;
  metricsPort: number;
  opts: OverloadOptions;
}): Promise<StepOutcome> {
  const { rate, opts } = o;
  const n = Math.max(1, Math.round(rate * o.durationS));
  // Recorded first, stamped with the seconds they will be sent in: the step starts on a whole
  // second far enough ahead. A recording that overran its start is redone for a later one.
  let requests: RecordedRequest[] = [];
  let startWall = 0;
  for (let margin = 3; ; margin *= 2) {
    startWall = Math.ceil((Date.now() + n * o.recordMs * margin + 500) / 1000) * 1000;
    const startS = startWall / 1000;
    requests = Array.from({ length: n }, (_, k) => o.recorder.record(o.tokens[k % o.tokens.length]!, { nowS: startS + Math.floor(k / rate) }));
    if (Date.now() < startWall - 100) break;
    opts.log(`  recording ${n} requests took longer than planned; again, for a later start`);
  }
  opts.log(`  ${o.multiple}x: ${Math.round(rate)} requests/s for ${o.durationS.toFixed(1)} s (${n} recorded)`);
  o.answers.reset(o.index, n);
  const sentAt = new Float64Array(n);
  const before = await scrapeMetrics(o.metricsPort);
  const natsLogFrom = o.nats.logs().length;
  const cpu0 = { service: processCpuMicros(o.service.pid), nats: processCpuMicros(o.nats.pid), sender: process.cpuUsage(), machine: machineJiffies() };
  await sleep(Math.max(0, startWall - Date.now()));
  while (Date.now() < startWall) {
    // The timer may fire a little early: the stamps say the step starts on this second.
  }

  // Open loop: every tick sends what the schedule says is due by now, whatever came back.
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const start = performance.now();
  const interval = 1000 / rate;
  let sent = 0;
  let behindMaxMs = 0;
  let staleStamps = 0;
  const pubOpts = (k: number) => ({ reply: `${REPLY_PREFIX}.${o.index}.${k}`, ...(o.headers ? { headers: o.headers } : {}) });
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      const due = Math.min(n, Math.floor((now - start) / interval) + 1);
      if (due > sent) behindMaxMs = Math.max(behindMaxMs, now - (start + sent * interval));
      for (; sent < due; sent++) {
        o.sender.publish(AUTH_SUBJECT, requests[sent]!.data, pubOpts(sent));
        sentAt[sent] = now;
        // Sent after the second its stamp names had ended: older than nats-server's would be.
        if (now - start >= (Math.floor(sent / rate) + 1) * 1000) staleStamps++;
      }
      if (sent === n) {
        clearInterval(timer);
        resolve();
      }
    };
    const timer = setInterval(tick, TICK_MS);
    tick();
  });
  const lastSent = performance.now();
  loop.disable();
  // Until the service has decided every request (answered or dropped: an overloaded service
  // reads its backlog long after the last was sent, and the next step must not start on it);
  // then a moment for the last answers on their way.
  let after = await scrapeMetrics(o.metricsPort);
  const decided = () => {
    const d = metricsDelta(before, after);
    return d ? sumSeries(d, 'oidc_callout_requests_total') : 0;
  };
  while (decided() < n && performance.now() < lastSent + SETTLE_MAX_MS) {
    await sleep(SETTLE_POLL_MS);
    after = await scrapeMetrics(o.metricsPort);
  }
  const settledMs = performance.now() - lastSent;
  await sleep(LAST_ANSWERS_MS);
  const senderCpu = process.cpuUsage(cpu0.sender);
  const cpu1 = { service: processCpuMicros(o.service.pid), nats: processCpuMicros(o.nats.pid), machine: machineJiffies() };
  const delta = metricsDelta(before, await scrapeMetrics(o.metricsPort));
  const undecided = n - decided();
  if (undecided > 0) opts.log(`  ${undecided} requests not decided by the service ${SETTLE_MAX_MS / 1000} s after the last was sent`);

  const seconds = Math.max(o.durationS, (lastSent - start + interval) / 1000);
  const latency = new Samples();
  let answered = 0;
  let good = 0;
  let late = 0;
  let wrong = 0;
  let firstWrong: string | undefined;
  const { at, data } = o.answers;
  for (let k = 0; k < n; k++) {
    const answer = data[k];
    if (answer === undefined) continue;
    answered++;
    const why = o.recorder.check(answer, requests[k]!.userNkey);
    if (why) {
      wrong++;
      firstWrong ??= why;
      continue;
    }
    const ms = at[k]! - sentAt[k]!;
    if (ms < AUTH_TIMEOUT_MS) {
      good++;
      latency.push(ms);
    } else late++;
  }
  if (firstWrong) opts.log(`  WRONG ANSWERS: ${wrong}, the first: ${firstWrong}`);
  const slowConsumers =
    o.nats
      .logs()
      .slice(natsLogFrom)
      .match(/slow consumer/gi)?.length ?? 0;
  if (slowConsumers) opts.log(`  nats-server cut off a slow consumer ${slowConsumers} times (the service did not read what it was sent)`);
  const [p50, p99] = latency.percentiles(50, 99);
  const shed = (reason: string) => (delta ? sumSeries(delta, 'oidc_callout_shed_total', { reason }) : Number.NaN);
  const machine = (cpu1.machine.busy - cpu0.machine.busy) / Math.max(1, cpu1.machine.total - cpu0.machine.total);
  const round1 = (v: number) => Math.round(v * 10) / 10;
  const extra = {
    multiple: o.multiple,
    targetPerS: Math.round(rate),
    sent: n,
    offeredPerS: Math.round(n / seconds),
    answers: answered,
    answersPerS: Math.round(answered / seconds),
    good,
    goodPerS: Math.round(good / seconds),
    late,
    latePerS: Math.round(late / seconds),
    noAnswer: n - answered,
    wrong,
    duplicates: o.answers.duplicates,
    strays: o.answers.strays,
    serviceAllowed: delta ? sumSeries(delta, 'oidc_callout_requests_total', { result: 'allow' }) : Number.NaN,
    shedExpired: shed('expired'),
    shedTooLate: shed('too_late'),
    shedQueueFull: shed('queue_full'),
    serviceCpuUsPerAnswer: answered ? Math.round((cpu1.service - cpu0.service) / answered) : Number.NaN,
    serviceCpuUs: cpu1.service - cpu0.service,
    serviceCpuS: round1((cpu1.service - cpu0.service) / 1e6),
    natsCpuS: round1((cpu1.nats - cpu0.nats) / 1e6),
    senderCpuS: round1((senderCpu.user + senderCpu.system) / 1e6),
    machineBusy: Math.round(machine * 100) / 100,
    senderLoopP99Ms: round1(loop.percentile(99) / 1e6),
    senderLoopMaxMs: round1(loop.max / 1e6),
    senderBehindMaxMs: round1(behindMaxMs),
    staleStamps,
    // Seconds after the last request until the service had decided all (its backlog).
    settledS: round1(settledMs / 1000),
    undecided,
    // nats-server cuts off a connection that does not read what it is sent (the service's, here).
    slowConsumers,
  };
  return { good, seconds, p50Ms: latency.length ? p50 : undefined, p99Ms: latency.length ? p99 : undefined, extra };
}

/** The sweep as a table: one line per step (and the capacity run it is relative to). */
export function overloadTable(results: readonly BenchResult[]): string {
  const n = (r: BenchResult, k: string): number => {
    const v = r.extra?.[k];
    return typeof v === 'number' ? v : Number.NaN;
  };
  const int = (v: number) => (Number.isNaN(v) ? '-' : Math.round(v).toLocaleString('en-US'));
  const ms = (v: number | undefined) => (v === undefined ? '-' : (v / 1000).toFixed(v < 10_000 ? 1 : 0));
  const steps = results.filter((r) => r.extra?.['multiple'] !== undefined);
  const capacity = results.find((r) => r.extra?.['multiple'] === undefined);
  const rows = steps.map((r) => [
    `${n(r, 'multiple')}x`,
    int(n(r, 'offeredPerS')),
    int(n(r, 'answersPerS')),
    int(n(r, 'goodPerS')),
    int(n(r, 'latePerS')),
    int(n(r, 'noAnswer')),
    int(n(r, 'wrong')),
    `${int(n(r, 'shedExpired'))} / ${int(n(r, 'shedTooLate'))} / ${int(n(r, 'shedQueueFull'))}`,
    int(n(r, 'serviceCpuUsPerAnswer')),
    int(n(r, 'serviceCpuUsPerDrop')),
    `${ms(r.p50Us)} / ${ms(r.p99Us)}`,
    `${n(r, 'senderLoopP99Ms')} / ${n(r, 'senderLoopMaxMs')}`,
    int(n(r, 'senderBehindMaxMs')),
    String(n(r, 'settledS')),
  ]);
  const head = capacity
    ? `capacity (${CAPACITY_IN_FLIGHT} in flight, closed loop): ${int(capacity.opsPerSec)}/s, ${int(n(capacity, 'serviceCpuUsPerAnswer'))} µs service CPU per answer\n`
    : '';
  return (
    head +
    table(
      [
        'load',
        'offered/s',
        'answers/s',
        'goodput/s',
        'late/s',
        'no answer',
        'wrong',
        'shed expired / too late / queue full',
        'svc µs/answer',
        'svc µs/drop',
        'good p50 / p99 ms',
        'sender lag p99 / max ms',
        'behind ms',
        'decided after s',
      ],
      rows,
    )
  );
}
