/**
 * The processes the end-to-end benchmarks start, and their cleanup: nats-server binaries to pick
 * from, the service run as its own process (`node dist/src/main.js run --config FILE`, exactly as
 * deployed), the reconnect storm's fleet processes, temporary work directories, and hooks that
 * stop everything on exit and Ctrl-C.
 * nats-server itself is started with test/helpers/nats-server.ts, which has its own exit hooks.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { natsServerBinaries, type NatsServerBinary } from '../test/helpers/nats-server-bin.js';
import { connectOnceAsync } from './loadgen.js';

const here = dirname(fileURLToPath(import.meta.url));
const MAIN_JS = join(here, '..', 'src', 'main.js');

// ---- cleanup on exit and Ctrl-C -------------------------------------------------------------
const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let hooks = false;

/** Kills the children and removes the work directories when the process exits or is interrupted. */
export function installHooks(): void {
  if (hooks) return;
  hooks = true;
  process.on('exit', () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping the benchmark processes\n`);
      // 'exit' hooks (ours and the nats-server helper's) kill the children.
      process.exit(130);
    });
  }
}

/** A temporary directory removed by {@link removeWorkDir} or, at the latest, on exit. */
export function makeWorkDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-callout-bench-'));
  tempDirs.add(dir);
  return dir;
}

export function removeWorkDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/** Picks the nats-server binaries named by `selectors` (version prefixes, 'newest' or 'all'). */
export async function pickServers(selectors: readonly string[]): Promise<NatsServerBinary[]> {
  const all = await natsServerBinaries();
  if (all.length === 0) throw new Error('no nats-server binary found');
  const picked = new Map<string, NatsServerBinary>();
  for (const s of selectors) {
    if (s === 'all') for (const b of all) picked.set(b.path, b);
    else if (s === 'newest') picked.set(all.at(-1)!.path, all.at(-1)!);
    else {
      const matches = all.filter((b) => b.version === s || b.version.startsWith(`${s}.`));
      if (matches.length === 0) throw new Error(`no nats-server ${s} (have ${all.map((b) => b.version).join(', ')})`);
      picked.set(matches.at(-1)!.path, matches.at(-1)!);
    }
  }
  return [...picked.values()];
}

/**
 * Forks `node MODULE` (a file of dist/bench) with a message channel (structured clone, so
 * typed arrays and bigints pass), killed on exit and Ctrl-C like the service. The child shares
 * stdout and stderr; it should exit when the channel closes (its parent is gone).
 */
export function forkBenchChild(module: string, args: readonly string[] = []): ChildProcess {
  installHooks();
  const child = fork(join(here, module), [...args], { serialization: 'advanced', execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export interface RunningService {
  readonly pid: number;
  stderr(): string;
  exited(): boolean;
  /** SIGTERM (the service drains), SIGKILL after 5 s. */
  stop(): Promise<void>;
}

/** Starts `oidc-callout run --config FILE` with stdout (its JSON log) appended to `logFile`. */
export async function startService(configFile: string, logFile: string, profileDir?: string): Promise<RunningService> {
  installHooks();
  const out = openSync(logFile, 'a');
  const args = [...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []), MAIN_JS, 'run', '--config', configFile];
  const child = spawn(process.execPath, args, { stdio: ['ignore', out, 'pipe'] });
  closeSync(out);
  children.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let gone = false;
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      gone = true;
      resolve();
    }),
  );
  return {
    pid: child.pid!,
    stderr: () => stderr,
    exited: () => gone,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      children.delete(child);
    },
  };
}

/** Waits until a real connect through the callout succeeds (the service has subscribed). */
export async function waitReady(port: number, token: string, service: RunningService): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (service.exited()) throw new Error(`oidc-callout exited before it was ready:\n${service.stderr()}`);
    const r = await connectOnceAsync(port, token, 3000);
    if (r.outcome === 'ok') return;
    if (Date.now() > deadline) throw new Error(`callout not ready after 30 s (last: ${r.outcome} ${r.detail ?? ''})\n${service.stderr()}`);
    await sleep(100);
  }
}
