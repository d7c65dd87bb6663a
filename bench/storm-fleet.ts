/**
 * The reconnect storm's client fleet, in this process or split over child processes.
 *
 * A process holds one socket per client and cannot open more files than its open-file limit
 * allows (without CAP_SYS_RESOURCE the hard limit stays where it is). When the whole fleet does
 * not fit, it is split into K contiguous slices, each a {@link ClientFleet} in a child process
 * (storm-fleet-child.ts, started with `fork`); this process orchestrates the phases over the
 * message channel and merges what the children counted. When it fits, the fleet runs here as
 * before ({@link LocalFleet}), so runs of up to ~19,000 clients stay comparable with earlier ones.
 *
 * Both offer the same {@link StormFleet}: windows are closed and opened by one call that returns
 * the closed window's counts (merged: attempts per client in client order, failures by reason
 * summed, latency samples pooled), so the phase code does not care where the clients live.
 * Children also report the event-loop delay of each window (the load generator's own lag, which
 * is what makes its timing late) and push their running counts at most every 50 ms; the moment
 * a child's last client connected is its own `process.hrtime` (CLOCK_MONOTONIC, the same clock in
 * every process of the machine), so "all connected after" does not include the message's delay.
 */
import type { ChildProcess } from 'node:child_process';
import { benchSubject } from './fixtures.js';
import { nowNs, Samples } from './lib.js';
import { connectPayload } from './loadgen.js';
import { forkBenchChild } from './processes.js';
import { ClientFleet, type FleetWindow, type VerifyResult } from './storm-clients.js';

/** The subjects of the permission check: client i may publish on its own, not on its neighbour's. */
export const permissionSubjects = (i: number): { allowed: string; denied: string } => ({
  allowed: `orders.acme.${benchSubject(i)}.created`,
  denied: `orders.acme.${benchSubject(i + 1)}.created`,
});

export interface LoopDelayMs {
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

/** The current window's running counts (approximate across processes: up to 50 ms old). */
export interface LiveCounts {
  readonly attempts: number;
  readonly connects: number;
  readonly failures: Readonly<Record<string, number>>;
}

/** A window that was closed: the whole fleet's counts, and each child's event-loop delay over it. */
export interface ClosedWindow {
  readonly window: FleetWindow;
  /** One per child process; empty when the fleet runs in this process (its delay is measured by the caller). */
  readonly loopDelayMs: readonly LoopDelayMs[];
}

export interface StormFleet {
  readonly size: number;
  /** The processes holding the clients: this one, or the children. */
  readonly pids: readonly number[];
  readonly inProcess: boolean;
  /** Clients connected now (across processes: as last reported). */
  readonly connected: number;
  live(): LiveCounts;
  /** Closes the current window and opens `name`; resolves with the closed window. */
  beginWindow(name: string): Promise<ClosedWindow>;
  /** Every client starts its first attempt. */
  start(): void;
  /** Brings `connected` up to date (children report it at most every 50 ms). */
  refresh(): Promise<void>;
  /** Resolves with the moment (nowNs) every client was connected, or null after `timeoutMs`. */
  waitAllConnected(timeoutMs: number): Promise<bigint | null>;
  verifyPermissions(timeoutMs: number): Promise<VerifyResult>;
  /** Stops every client (and the child processes). */
  stop(): Promise<void>;
}

export interface StormFleetOptions {
  readonly tokens: readonly string[];
  /** Client ports of the nats-servers; client i goes to `ports[i % ports.length]`. */
  readonly ports: readonly number[];
  readonly sources: readonly string[];
  readonly attemptTimeoutMs: number;
  readonly retryMinMs: number;
  readonly retryMaxMs: number;
}

/** The fleet in this process: today's storm. */
export class LocalFleet implements StormFleet {
  readonly #fleet: ClientFleet;
  readonly inProcess = true;
  readonly pids = [process.pid];

  constructor(o: StormFleetOptions) {
    this.#fleet = new ClientFleet({ ...o, payloads: o.tokens.map(connectPayload) });
  }

  get size(): number {
    return this.#fleet.size;
  }

  get connected(): number {
    return this.#fleet.connected;
  }

  live(): LiveCounts {
    return this.#fleet.window;
  }

  beginWindow(name: string): Promise<ClosedWindow> {
    const closed = this.#fleet.window;
    this.#fleet.beginWindow(name);
    return Promise.resolve({ window: closed, loopDelayMs: [] });
  }

  start(): void {
    this.#fleet.start();
  }

  refresh(): Promise<void> {
    return Promise.resolve();
  }

  async waitAllConnected(timeoutMs: number): Promise<bigint | null> {
    return (await this.#fleet.waitAllConnected(timeoutMs)) ? (this.#fleet.fullSinceNs ?? nowNs()) : null;
  }

  verifyPermissions(timeoutMs: number): Promise<VerifyResult> {
    return this.#fleet.verifyPermissions(permissionSubjects, timeoutMs);
  }

  stop(): Promise<void> {
    this.#fleet.stop();
    return Promise.resolve();
  }
}

// ---- the message channel --------------------------------------------------------------------

/** A window as a child sends it (structured clone: typed arrays and bigints pass as they are). */
export interface WindowMessage {
  readonly name: string;
  readonly attempts: number;
  readonly attemptsPerClient: Uint32Array;
  readonly connects: number;
  readonly failures: Record<string, number>;
  readonly disconnects: number;
  readonly errorsWhileConnected: number;
  readonly details: string[];
  readonly latencyNs: Float64Array;
  readonly loopDelayMs: LoopDelayMs;
}

/** A child's running state, pushed at most every 50 ms and with every answer. */
export interface ChildStatus {
  readonly connected: number;
  readonly fullSinceNs: bigint | undefined;
  readonly attempts: number;
  readonly connects: number;
  readonly failures: Record<string, number>;
}

export type ToChild =
  | { readonly type: 'tokens'; readonly tokens: string[] }
  | {
      readonly type: 'init';
      readonly id: number;
      readonly firstIndex: number;
      readonly ports: readonly number[];
      readonly sources: readonly string[];
      readonly attemptTimeoutMs: number;
      readonly retryMinMs: number;
      readonly retryMaxMs: number;
    }
  | { readonly type: 'window'; readonly id: number; readonly name: string }
  | { readonly type: 'start' }
  | { readonly type: 'status'; readonly id: number }
  | { readonly type: 'verify'; readonly id: number; readonly timeoutMs: number }
  | { readonly type: 'stop'; readonly id: number };

export type FromChild =
  | { readonly type: 'status'; readonly status: ChildStatus }
  | { readonly type: 'reply'; readonly id: number; readonly status: ChildStatus; readonly window?: WindowMessage; readonly verify?: VerifyResult }
  | { readonly type: 'error'; readonly id?: number; readonly message: string };

type Reply = Extract<FromChild, { type: 'reply' }>;

/** Tokens per message while a child is loaded (a message is cloned whole). */
const TOKENS_PER_MESSAGE = 2000;

class Child {
  readonly proc: ChildProcess;
  readonly size: number;
  status: ChildStatus;
  readonly #pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  #nextId = 1;
  #gone: Error | undefined;

  constructor(
    proc: ChildProcess,
    size: number,
    readonly label: string,
    onStatus: () => void,
  ) {
    this.proc = proc;
    this.size = size;
    this.status = { connected: 0, fullSinceNs: undefined, attempts: 0, connects: 0, failures: {} };
    proc.on('message', (m: FromChild) => {
      if (m.type === 'status') {
        this.status = m.status;
        onStatus();
      } else if (m.type === 'reply') {
        this.status = m.status;
        this.#pending.get(m.id)?.resolve(m);
        this.#pending.delete(m.id);
        onStatus();
      } else {
        const err = new Error(`${label}: ${m.message}`);
        if (m.id !== undefined && this.#pending.has(m.id)) {
          this.#pending.get(m.id)!.reject(err);
          this.#pending.delete(m.id);
        } else process.stderr.write(`${err.message}\n`);
      }
    });
    proc.once('exit', (code, signal) => {
      this.#gone = new Error(`${label} (pid ${proc.pid}) exited (${signal ?? `code ${code}`})`);
      for (const p of this.#pending.values()) p.reject(this.#gone);
      this.#pending.clear();
    });
  }

  get exited(): boolean {
    return this.#gone !== undefined;
  }

  send(m: ToChild): void {
    if (this.#gone) throw this.#gone;
    this.proc.send(m);
  }

  /** Sends a message with a fresh `id` and resolves with the child's reply to it. */
  request(m: { type: 'init' | 'window' | 'status' | 'verify' | 'stop' } & Record<string, unknown>): Promise<Reply> {
    if (this.#gone) return Promise.reject(this.#gone);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.proc.send({ ...m, id });
    });
  }
}

/** The fleet in K child processes, client slices in order. */
export class ProcessFleet implements StormFleet {
  readonly inProcess = false;
  readonly size: number;
  readonly #children: Child[];
  readonly #sizes: readonly number[];
  #openedNs = nowNs();
  #openedName = 'initial';
  #onStatus: (() => void) | undefined;

  private constructor(children: Child[], sizes: readonly number[]) {
    this.#children = children;
    this.#sizes = sizes;
    this.size = sizes.reduce((a, b) => a + b, 0);
  }

  /** Forks one child per entry of `sizes` and loads its slice of the tokens. */
  static async start(o: StormFleetOptions, sizes: readonly number[]): Promise<ProcessFleet> {
    const children: Child[] = [];
    let fleet: ProcessFleet | undefined;
    const onStatus = (): void => {
      if (fleet) fleet.#onStatus?.();
    };
    try {
      let first = 0;
      const loaded: Promise<Reply>[] = [];
      for (const [k, size] of sizes.entries()) {
        const child = new Child(forkBenchChild('storm-fleet-child.js'), size, `fleet process ${k + 1}/${sizes.length}`, onStatus);
        children.push(child);
        for (let i = first; i < first + size; i += TOKENS_PER_MESSAGE) {
          child.send({ type: 'tokens', tokens: o.tokens.slice(i, Math.min(first + size, i + TOKENS_PER_MESSAGE)) });
        }
        loaded.push(
          child.request({
            type: 'init',
            firstIndex: first,
            ports: o.ports,
            sources: o.sources,
            attemptTimeoutMs: o.attemptTimeoutMs,
            retryMinMs: o.retryMinMs,
            retryMaxMs: o.retryMaxMs,
          }),
        );
        first += size;
      }
      await Promise.all(loaded);
    } catch (err) {
      for (const c of children) c.proc.kill('SIGKILL');
      throw err;
    }
    fleet = new ProcessFleet(children, sizes);
    return fleet;
  }

  get pids(): readonly number[] {
    return this.#children.map((c) => c.proc.pid!);
  }

  get connected(): number {
    return this.#children.reduce((n, c) => n + c.status.connected, 0);
  }

  live(): LiveCounts {
    const failures: Record<string, number> = {};
    let attempts = 0;
    let connects = 0;
    for (const c of this.#children) {
      attempts += c.status.attempts;
      connects += c.status.connects;
      for (const [k, v] of Object.entries(c.status.failures)) failures[k] = (failures[k] ?? 0) + v;
    }
    return { attempts, connects, failures };
  }

  async beginWindow(name: string): Promise<ClosedWindow> {
    const startNs = this.#openedNs;
    const closedName = this.#openedName;
    this.#openedNs = nowNs();
    this.#openedName = name;
    const replies = await Promise.all(this.#children.map((c) => c.request({ type: 'window', name })));
    const parts = replies.map((r) => r.window!);
    const attemptsPerClient = new Uint32Array(this.size);
    let at = 0;
    for (const [k, p] of parts.entries()) {
      attemptsPerClient.set(p.attemptsPerClient, at);
      at += this.#sizes[k]!;
    }
    const failures: Record<string, number> = {};
    for (const p of parts) for (const [k, v] of Object.entries(p.failures)) failures[k] = (failures[k] ?? 0) + v;
    const sum = (f: (p: WindowMessage) => number): number => parts.reduce((n, p) => n + f(p), 0);
    const window: FleetWindow = {
      name: closedName,
      startNs,
      attempts: sum((p) => p.attempts),
      attemptsPerClient,
      connects: sum((p) => p.connects),
      failures,
      disconnects: sum((p) => p.disconnects),
      errorsWhileConnected: sum((p) => p.errorsWhileConnected),
      details: new Set(parts.flatMap((p) => p.details).slice(0, 8)),
      latency: Samples.merge(parts.map((p) => p.latencyNs)),
    };
    return { window, loopDelayMs: parts.map((p) => p.loopDelayMs) };
  }

  start(): void {
    for (const c of this.#children) c.send({ type: 'start' });
  }

  async refresh(): Promise<void> {
    await Promise.all(this.#children.map((c) => c.request({ type: 'status' })));
  }

  waitAllConnected(timeoutMs: number): Promise<bigint | null> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const dead = this.#children.find((c) => c.exited);
        if (dead) {
          done();
          reject(new Error(`${dead.label} exited during the phase`));
          return;
        }
        let last = 0n;
        for (const [k, c] of this.#children.entries()) {
          const since = c.status.fullSinceNs;
          if (c.status.connected !== this.#sizes[k] || since === undefined) return;
          if (since > last) last = since;
        }
        done();
        resolve(last);
      };
      const timer = setTimeout(() => {
        done();
        resolve(null);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.#onStatus = undefined;
      };
      this.#onStatus = check;
      check();
    });
  }

  async verifyPermissions(timeoutMs: number): Promise<VerifyResult> {
    const parts = (await Promise.all(this.#children.map((c) => c.request({ type: 'verify', timeoutMs })))).map((r) => r.verify!);
    const sum = (f: (v: VerifyResult) => number): number => parts.reduce((n, v) => n + f(v), 0);
    return {
      seconds: Math.max(...parts.map((v) => v.seconds)),
      checked: sum((v) => v.checked),
      correct: sum((v) => v.correct),
      mismatches: sum((v) => v.mismatches),
      notConnected: sum((v) => v.notConnected),
      details: parts.flatMap((v) => v.details).slice(0, 5),
    };
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.#children.map(async (c) => {
        if (c.exited) return;
        const exited = new Promise<void>((resolve) => c.proc.once('exit', () => resolve()));
        const kill = setTimeout(() => c.proc.kill('SIGKILL'), 5000);
        // The child stops its clients and exits after answering; a dead channel is fine too.
        await c.request({ type: 'stop' }).catch(() => undefined);
        await exited;
        clearTimeout(kill);
      }),
    );
  }
}

/** The fleet in this process when `sizes` has one entry, else split over child processes. */
export async function startStormFleet(o: StormFleetOptions, sizes: readonly number[]): Promise<StormFleet> {
  return sizes.length <= 1 ? new LocalFleet(o) : ProcessFleet.start(o, sizes);
}
