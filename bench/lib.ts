/**
 * Shared pieces of the benchmarks: the result record, timing loops, CPU and memory readers and
 * the table printer. Everything here is measured with process.hrtime.bigint (wall) and
 * process.cpuUsage (CPU of this process, all threads, so WebCrypto's libuv threadpool work is
 * counted too).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** One measured line of the table and of bench/results.jsonl. */
export interface BenchResult {
  readonly group: 'micro' | 'e2e';
  readonly name: string;
  /** Operations (or connects) measured, warm-up excluded. */
  readonly ops: number;
  /** Wall-clock seconds of the measured window. */
  readonly seconds: number;
  readonly opsPerSec: number;
  /** Wall-clock µs per operation (1e6 / ops/s). */
  readonly meanUs: number;
  /** CPU µs per operation of the measuring process (all threads); micro benches only. */
  readonly cpuUs?: number;
  /** Latency percentiles in µs, where one operation has a meaningful latency of its own. */
  readonly p50Us?: number;
  readonly p90Us?: number;
  readonly p99Us?: number;
  /** Anything else worth keeping (e2e: CPU per connect per process, failures, versions). */
  readonly extra?: Readonly<Record<string, number | string | boolean>>;
}

export const nowNs = (): bigint => process.hrtime.bigint();

/**
 * A growable list of float samples without per-push allocation. Its values can be handed to
 * another process and merged: the latencies of a storm fleet split over processes are pooled
 * before percentiles are taken.
 */
export class Samples {
  #data: Float64Array;
  #n: number;

  constructor(values?: Float64Array) {
    this.#data = values ? values.slice() : new Float64Array(1 << 14);
    this.#n = values ? values.length : 0;
  }

  /** The samples of several lists in one. */
  static merge(parts: readonly Float64Array[]): Samples {
    const all = new Float64Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return new Samples(all);
  }

  /** A copy of the samples. */
  values(): Float64Array {
    return this.#data.slice(0, this.#n);
  }

  push(v: number): void {
    if (this.#n === this.#data.length) {
      const bigger = new Float64Array(this.#data.length * 2);
      bigger.set(this.#data);
      this.#data = bigger;
    }
    this.#data[this.#n++] = v;
  }

  get length(): number {
    return this.#n;
  }

  /** Nearest-rank percentiles, `ps` in 0..100. */
  percentiles(...ps: number[]): number[] {
    if (this.#n === 0) return ps.map(() => Number.NaN);
    const sorted = this.#data.slice(0, this.#n).sort();
    return ps.map((p) => sorted[Math.min(this.#n - 1, Math.max(0, Math.ceil((p / 100) * this.#n) - 1))]!);
  }
}

export interface MeasureOptions {
  /** Minimum measured wall time. Default 1000 ms. */
  readonly minMs?: number;
  /** Warm-up wall time before measuring (JIT, caches). Default 300 ms. */
  readonly warmupMs?: number;
  /** Minimum measured operations, for very slow operations. Default 1. */
  readonly minOps?: number;
}

const cpuMicros = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

function result(name: string, ops: number, wallNs: bigint, cpu: number, lat: Samples | undefined, extra?: BenchResult['extra']): BenchResult {
  const seconds = Number(wallNs) / 1e9;
  const [p50, p90, p99] = lat ? lat.percentiles(50, 90, 99) : [];
  return {
    group: 'micro',
    name,
    ops,
    seconds,
    opsPerSec: ops / seconds,
    meanUs: (seconds * 1e6) / ops,
    cpuUs: cpu / ops,
    ...(lat ? { p50Us: p50! / 1000, p90Us: p90! / 1000, p99Us: p99! / 1000 } : {}),
    ...(extra ? { extra } : {}),
  };
}

/**
 * Times a synchronous operation one call at a time; every call is timed on its own so p50/p99
 * are per operation (hrtime costs well under 1 % of any operation measured here).
 */
export function measureSync(name: string, fn: (i: number) => unknown, opts: MeasureOptions = {}): BenchResult {
  const minNs = BigInt(Math.round((opts.minMs ?? 1000) * 1e6));
  const warmNs = BigInt(Math.round((opts.warmupMs ?? 300) * 1e6));
  let i = 0;
  const warmEnd = nowNs() + warmNs;
  while (nowNs() < warmEnd) fn(i++);
  const lat = new Samples();
  const cpu0 = cpuMicros();
  const start = nowNs();
  const end = start + minNs;
  let ops = 0;
  let t = start;
  while (t < end || ops < (opts.minOps ?? 1)) {
    fn(i++);
    const t2 = nowNs();
    lat.push(Number(t2 - t));
    t = t2;
    ops++;
  }
  return result(name, ops, t - start, cpuMicros() - cpu0, lat);
}

/** Times an asynchronous operation strictly one at a time (await each). */
export async function measureAsync(name: string, fn: (i: number) => Promise<unknown>, opts: MeasureOptions = {}): Promise<BenchResult> {
  const minNs = BigInt(Math.round((opts.minMs ?? 1000) * 1e6));
  const warmNs = BigInt(Math.round((opts.warmupMs ?? 300) * 1e6));
  let i = 0;
  const warmEnd = nowNs() + warmNs;
  while (nowNs() < warmEnd) await fn(i++);
  const lat = new Samples();
  const cpu0 = cpuMicros();
  const start = nowNs();
  const end = start + minNs;
  let ops = 0;
  let t = start;
  while (t < end || ops < (opts.minOps ?? 1)) {
    await fn(i++);
    const t2 = nowNs();
    lat.push(Number(t2 - t));
    t = t2;
    ops++;
  }
  return result(name, ops, t - start, cpuMicros() - cpu0, lat);
}

/**
 * Times an asynchronous operation with `inFlight` calls started together (Promise.all batches).
 * The percentiles are the latency of each call from its batch's start, i.e. latency under that
 * load; ops/s and CPU µs/op are what the batching buys.
 */
export async function measureBatched(name: string, inFlight: number, fn: (i: number) => Promise<unknown>, opts: MeasureOptions = {}): Promise<BenchResult> {
  const minNs = BigInt(Math.round((opts.minMs ?? 1000) * 1e6));
  const warmNs = BigInt(Math.round((opts.warmupMs ?? 300) * 1e6));
  let i = 0;
  const batch = (lat?: Samples): Promise<unknown> => {
    const t0 = nowNs();
    const calls: Promise<unknown>[] = [];
    for (let j = 0; j < inFlight; j++) {
      const p = fn(i++);
      calls.push(lat ? p.then(() => lat.push(Number(nowNs() - t0))) : p);
    }
    return Promise.all(calls);
  };
  const warmEnd = nowNs() + warmNs;
  while (nowNs() < warmEnd) await batch();
  const lat = new Samples();
  const cpu0 = cpuMicros();
  const start = nowNs();
  const end = start + minNs;
  let ops = 0;
  let t = start;
  while (t < end || ops < (opts.minOps ?? 1)) {
    await batch(lat);
    t = nowNs();
    ops += inFlight;
  }
  return result(name, ops, t - start, cpuMicros() - cpu0, lat, { inFlight });
}

// ---------------------------------------------------------------------------------------------
// CPU of other processes and of the machine

let clkTck: number | undefined;

/** Clock ticks per second of /proc times (almost always 100). */
export function clockTicks(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of a process (all its threads) in µs, from /proc/<pid>/stat. */
export function processCpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may contain spaces: split after it.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1e6) / clockTicks();
}

/** System calls of a process that read and wrote (`syscr`, `syscw` of /proc/<pid>/io). */
export function processSyscalls(pid: number): { reads: number; writes: number } {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  const field = (name: string) => Number(/^(\w+): (\d+)$/m.exec(io.slice(io.indexOf(`${name}:`)))?.[2] ?? Number.NaN);
  return { reads: field('syscr'), writes: field('syscw') };
}

/**
 * Peak resident set size (VmHWM) of a live process in KiB, from /proc/<pid>/status; undefined
 * once the process is gone (read it before stopping the process).
 */
export function peakRssKiB(pid: number): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Busy, stolen and total jiffies of the whole machine, from the first line of /proc/stat.
 * Steal (time the hypervisor gave our vCPUs to someone else) is counted neither as busy nor idle.
 */
export function machineJiffies(): { busy: number; steal: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest is already counted in user).
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  const steal = v[7] ?? 0;
  return { busy: total - idle - steal, steal, total };
}

/** Fraction of the machine's CPU busy over `ms` (to warn about a noisy neighbour). */
export async function machineBusyOver(ms: number): Promise<number> {
  const a = machineJiffies();
  await new Promise((r) => setTimeout(r, ms));
  const b = machineJiffies();
  return b.total === a.total ? 0 : (b.busy - a.busy) / (b.total - a.total);
}

// ---------------------------------------------------------------------------------------------
// Output

const fmt = (v: number | undefined, digits = 1): string => {
  if (v === undefined || Number.isNaN(v)) return '-';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  return v.toFixed(digits);
};

/** Renders rows as a fixed-width table (first column left-aligned, the others right-aligned). */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function microTable(results: readonly BenchResult[]): string {
  return table(
    ['micro benchmark', 'ops/s', 'mean µs/op', 'cpu µs/op', 'p50 µs', 'p99 µs'],
    results.map((r) => [r.name, fmt(r.opsPerSec, 0), fmt(r.meanUs), fmt(r.cpuUs), fmt(r.p50Us), fmt(r.p99Us)]),
  );
}

export function e2eTable(results: readonly BenchResult[]): string {
  const n = (r: BenchResult, k: string): number | undefined => {
    const v = r.extra?.[k];
    return typeof v === 'number' ? v : undefined;
  };
  return table(
    [
      'scenario',
      'server',
      'conc',
      'connects/s',
      'ok',
      'fail',
      'p50 ms',
      'p90 ms',
      'p99 ms',
      'svc µs/c',
      'nats µs/c',
      'gen µs/c',
      'total µs/c',
      'box busy',
      'other',
      'x plain',
    ],
    results.map((r) => [
      r.name,
      String(r.extra?.['server'] ?? ''),
      String(r.extra?.['concurrency'] ?? ''),
      fmt(r.opsPerSec, 0),
      fmt(n(r, 'success'), 0),
      fmt(n(r, 'failure'), 0),
      fmt(r.p50Us === undefined ? undefined : r.p50Us / 1000, 2),
      fmt(r.p90Us === undefined ? undefined : r.p90Us / 1000, 2),
      fmt(r.p99Us === undefined ? undefined : r.p99Us / 1000, 2),
      fmt(n(r, 'serviceCpuUsPerConnect'), 0),
      fmt(n(r, 'natsCpuUsPerConnect'), 0),
      fmt(n(r, 'loadgenCpuUsPerConnect'), 0),
      fmt(n(r, 'totalCpuUsPerConnect'), 0),
      n(r, 'machineBusy') === undefined ? '-' : `${Math.round(n(r, 'machineBusy')! * 100)} %`,
      n(r, 'unattributedBusy') === undefined ? '-' : `${Math.round(n(r, 'unattributedBusy')! * 100)} %`,
      n(r, 'vsPlain') === undefined ? '-' : `${n(r, 'vsPlain')!.toFixed(2)}x`,
    ]),
  );
}
