/**
 * The service as a real process (`node dist/src/main.js run --config FILE`), the way it is
 * deployed: for tests that kill it, stop it with a signal or run several replicas.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/test/helpers -> dist/src/main.js */
const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'main.js');

/** How a process ended. */
export interface ProcessExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** One line of the service's JSON log. */
export interface ServiceLogRecord {
  readonly time: string;
  readonly level: string;
  readonly msg: string;
  readonly [field: string]: unknown;
}

/** A running `run` process. */
export interface CalloutProcess {
  /** A label for messages (e.g. the replica's name). */
  readonly name: string;
  readonly pid: number;
  /** The port of the monitoring endpoints, when the configuration has `http.listen`. */
  readonly monitorPort: number | undefined;
  /** Everything written to stdout (the JSON log) and stderr so far. */
  output(): string;
  /** The parsed JSON log lines so far (stdout lines that are not JSON are skipped). */
  records(): ServiceLogRecord[];
  /** Resolves with the first record at or after index `from` matching `pred`; rejects after `timeoutMs` or if the process exits. */
  waitFor(pred: (r: ServiceLogRecord) => boolean, opts?: { from?: number; timeoutMs?: number }): Promise<ServiceLogRecord>;
  /** Resolves when the process has exited (stdout and stderr drained). */
  readonly exited: Promise<ProcessExit>;
  readonly running: boolean;
  /** GET /readyz: the status, or undefined when the endpoint does not answer. */
  readyz(): Promise<{ status: number; problems: string[] } | undefined>;
  /** Sends `signal` and waits for the exit; SIGKILL after `killAfterMs` (default 15 s). */
  stop(signal?: NodeJS.Signals, killAfterMs?: number): Promise<ProcessExit>;
}

const live = new Set<ChildProcess>();
let hooks = false;

function installExitHook(): void {
  if (hooks) return;
  hooks = true;
  // A test process that dies without its after() hooks must not leave replicas behind.
  process.on('exit', () => {
    for (const child of live) if (child.exitCode === null && child.signalCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
  });
}

/**
 * Spawns `run --config FILE` and resolves once it logged `listening` (and `monitoring`, when
 * `monitoring` is true). Rejects with its output if it exits or takes longer than `timeoutMs`.
 */
export async function startCalloutProcess(
  configFile: string,
  opts: { name: string; env?: Record<string, string>; monitoring?: boolean; timeoutMs?: number },
): Promise<CalloutProcess> {
  installExitHook();
  const child = spawn(process.execPath, [MAIN, 'run', '--config', configFile], {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`cannot start ${opts.name}`);
  const pid = child.pid;
  live.add(child);

  let out = '';
  let partial = '';
  const records: ServiceLogRecord[] = [];
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const l of listeners) l();
  };
  child.stdout!.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    out += text;
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      try {
        records.push(JSON.parse(line) as ServiceLogRecord);
      } catch {
        // Not a log line.
      }
    }
    notify();
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    out += chunk.toString('utf8');
  });
  let running = true;
  const exited = new Promise<ProcessExit>((resolve) => {
    child.once('close', (code, signal) => {
      running = false;
      live.delete(child);
      notify();
      resolve({ code, signal });
    });
  });

  const waitFor = (pred: (r: ServiceLogRecord) => boolean, o: { from?: number; timeoutMs?: number } = {}): Promise<ServiceLogRecord> => {
    const from = o.from ?? 0;
    const timeoutMs = o.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = records.slice(from).find(pred);
        if (found) {
          done();
          resolve(found);
        } else if (!running) {
          done();
          reject(new Error(`${opts.name} (pid ${pid}) exited before the awaited log line:\n${out}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${opts.name} (pid ${pid}): no matching log line within ${timeoutMs} ms:\n${out}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        listeners.delete(check);
      };
      listeners.add(check);
      check();
    });
  };

  const stop = async (signal: NodeJS.Signals = 'SIGTERM', killAfterMs = 15_000): Promise<ProcessExit> => {
    if (running) {
      process.kill(pid, signal);
      const timer = setTimeout(() => {
        if (running) process.kill(pid, 'SIGKILL');
      }, killAfterMs);
      const result = await exited;
      clearTimeout(timer);
      return result;
    }
    return exited;
  };

  let monitorPort: number | undefined;
  try {
    const timeoutMs = opts.timeoutMs ?? 15_000;
    await waitFor((r) => r.msg === 'listening', { timeoutMs });
    if (opts.monitoring) monitorPort = Number((await waitFor((r) => r.msg === 'monitoring', { timeoutMs }))['port']);
  } catch (err) {
    await stop('SIGKILL');
    throw err;
  }

  return {
    name: opts.name,
    pid,
    monitorPort,
    output: () => out,
    records: () => records,
    waitFor,
    exited,
    get running() {
      return running;
    },
    async readyz() {
      if (monitorPort === undefined) throw new Error(`${opts.name} has no monitoring endpoint`);
      try {
        const res = await fetch(`http://127.0.0.1:${monitorPort}/readyz`, { signal: AbortSignal.timeout(2_000) });
        const body = (await res.json()) as { problems?: string[] };
        return { status: res.status, problems: body.problems ?? [] };
      } catch {
        return undefined;
      }
    },
    stop,
  };
}
