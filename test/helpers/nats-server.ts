/**
 * Runs a real nats-server child process on 127.0.0.1 for integration tests.
 *
 * The server picks its own free port (`port: -1`) and reports it through a ports file, which
 * avoids the race of choosing a port in the test and hoping nobody takes it before the server
 * binds. Server output is captured because a callout rejection only ever reaches the client as
 * "Authorization Violation": the real reason is in the server log.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Options for {@link startNatsServer}. */
export interface NatsServerOptions {
  /** Path of the nats-server binary (see natsServerBinaries()). */
  bin: string;
  /**
   * nats-server configuration text WITHOUT `host`/`listen`/`port`: the helper adds
   * `host: 127.0.0.1`, `port: -1` and `ports_file_dir`, and passes `-a 127.0.0.1 -p -1` (the
   * port is `port` when given), which override any client listener in this text. Other listeners
   * (cluster, websocket, leafnodes, monitoring) are the caller's business: bind them to
   * 127.0.0.1 with port -1.
   */
  config: string;
  /**
   * Client port on 127.0.0.1, e.g. to restart a server on the port its clients know. Default:
   * a free port chosen by the server (-1).
   */
  port?: number;
  /** Start with `-D` so debug lines (e.g. callout details) appear in logs(). */
  debug?: boolean;
  /** How long to wait for the server to accept TCP connections. Default 10 s. */
  startTimeoutMs?: number;
}

/** A started nats-server. Stop it with `stop()` or `await using`. */
export interface RunningNats extends AsyncDisposable {
  /** Client URL, e.g. "nats://127.0.0.1:4222". */
  readonly url: string;
  readonly port: number;
  /**
   * WebSocket URL ("ws://127.0.0.1:PORT") when the config has a `websocket` listener, read from
   * the same ports file; undefined otherwise.
   */
  readonly websocketUrl: string | undefined;
  /** Operating system pid of the server process. */
  readonly pid: number;
  /** Path of the written configuration file (useful in failure messages). */
  readonly configPath: string;
  /** Everything the server wrote to stdout and stderr so far. */
  logs(): string;
  /**
   * Resolves with the first log line matching `re`, waiting up to `timeoutMs` (default 5 s).
   * Pass `from` = `logs().length` captured before an action to ignore older lines, so a match
   * left by an earlier connection attempt cannot satisfy the wait.
   */
  waitForLog(re: RegExp, timeoutMs?: number, from?: number): Promise<string>;
  /** SIGTERM, then SIGKILL after 2 s; removes the temporary directory. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Children still running, with their temporary directories: killed and removed if the test
 * process exits without stopping them.
 */
const live = new Map<ChildProcess, string>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  // 'exit' handlers must be synchronous: kill() is, and a leaked server would otherwise keep
  // its port and outlive the test run.
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      killAll();
      // Adding a listener disables Node's default "terminate on signal"; restore it unless
      // someone else handles the signal.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
}

function killAll(): void {
  for (const [child, dir] of live) {
    // A child that already exited is left alone by kill(), but its directory still goes.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
  live.clear();
}

/**
 * Starts nats-server with `config` plus a loopback listener on a free port, and resolves once it
 * accepts TCP connections. Rejects with the server's output if it exits first (bad config).
 */
export async function startNatsServer(opts: NatsServerOptions): Promise<RunningNats> {
  installExitHooks();
  const dir = await mkdtemp(join(tmpdir(), 'nats-server-'));
  const configPath = join(dir, 'nats-server.conf');
  // Ours go last so parse errors keep the caller's line numbers.
  const listenPort = String(opts.port ?? -1);
  const text = [opts.config, '', 'host: 127.0.0.1', `port: ${listenPort}`, `ports_file_dir: ${JSON.stringify(dir)}`, ''].join('\n');
  await writeFile(configPath, text);

  // The flags repeat host and port because only flags are sure to win: nats-server applies
  // `host`/`net`/`listen`/`port` from the file in no fixed order (verified: a stray
  // `net: 0.0.0.0` in the caller's text beat an appended `listen: 127.0.0.1:-1`), while
  // command-line options override the file. The server must never listen beyond loopback.
  const args = ['-c', configPath, '-a', '127.0.0.1', '-p', listenPort];
  if (opts.debug) args.push('-D');
  const child = spawn(opts.bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.set(child, dir);

  let output = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer): void => {
    output += chunk.toString('utf8');
    for (const listener of listeners) listener();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);

  let exited = false;
  let exitDescription = '';
  const exitPromise = new Promise<void>((resolveExit) => {
    const onGone = (description: string): void => {
      if (exited) return;
      exited = true;
      exitDescription = description;
      for (const listener of listeners) listener();
      resolveExit();
    };
    // 'close' rather than 'exit': it comes after stdout/stderr are drained, so the last words
    // of a server that refused its config are in the log when start fails.
    child.once('close', (code, signal) => onGone(signal ? `killed by ${signal}` : `exited with code ${code}`));
    child.once('error', (err) => onGone(`failed to start: ${err.message}`));
  });
  // A forgotten stop() must not keep the test process alive forever: the 'exit' hook kills it.
  child.unref();
  for (const stream of [child.stdout, child.stderr]) (stream as unknown as Socket | null)?.unref();

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (!exited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
        await exitPromise;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
      live.delete(child);
    })();
    return stopped;
  };

  const fail = async (why: string): Promise<never> => {
    await stop();
    throw new Error(`nats-server ${why}\n--- config ${configPath} ---\n${text}--- output ---\n${output}`);
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  let ports: ListenerPorts | undefined;
  while (ports === undefined) {
    if (exited) return fail(exitDescription);
    if (Date.now() > deadline) return fail('did not write its ports file in time');
    ports = await readPorts(dir, child.pid);
    if (ports === undefined) await sleep(20);
  }
  const { port, websocketUrl } = ports;
  // The ports file is written once the listener is open, but check TCP to be sure.
  while (!(await acceptsTcp(port))) {
    if (exited) return fail(exitDescription);
    if (Date.now() > deadline) return fail(`does not accept connections on port ${port}`);
    await sleep(20);
  }

  const waitForLog = (re: RegExp, timeoutMs = 5_000, from = 0): Promise<string> => {
    // A global or sticky RegExp keeps lastIndex between calls; use a stateless copy.
    const pattern = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
    return new Promise<string>((resolveWait, rejectWait) => {
      const check = (): void => {
        const line = findLine(output.slice(from), pattern);
        if (line !== undefined) {
          done();
          resolveWait(line);
        } else if (exited) {
          done();
          rejectWait(new Error(`nats-server ${exitDescription} before logging ${re}\n${output}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        rejectWait(new Error(`no nats-server log line matched ${re} within ${timeoutMs} ms\n${output.slice(from)}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        listeners.delete(check);
      };
      listeners.add(check);
      check();
    });
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    websocketUrl,
    pid: child.pid ?? -1,
    configPath,
    logs: () => output,
    waitForLog,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

interface ListenerPorts {
  port: number;
  websocketUrl: string | undefined;
}

/**
 * nats-server writes `<exe>_<pid>.ports` = {"nats": ["nats://127.0.0.1:1234"], "websocket":
 * ["ws://127.0.0.1:5678"], ...} once its listeners are open.
 */
async function readPorts(dir: string, pid: number | undefined): Promise<ListenerPorts | undefined> {
  if (pid === undefined) return undefined;
  const name = (await readdir(dir)).find((file) => file.endsWith(`_${pid}.ports`));
  if (name === undefined) return undefined;
  let parsed: { nats?: unknown; websocket?: unknown };
  try {
    parsed = JSON.parse(await readFile(join(dir, name), 'utf8')) as { nats?: unknown; websocket?: unknown };
  } catch {
    return undefined; // Caught mid-write: try again.
  }
  const first = Array.isArray(parsed.nats) ? parsed.nats[0] : undefined;
  if (typeof first !== 'string') return undefined;
  const port = Number(new URL(first).port);
  if (!Number.isInteger(port) || port <= 0) return undefined;
  const ws = Array.isArray(parsed.websocket) ? parsed.websocket[0] : undefined;
  return { port, websocketUrl: typeof ws === 'string' ? ws : undefined };
}

function acceptsTcp(port: number): Promise<boolean> {
  return new Promise((resolveProbe) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolveProbe(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolveProbe(false);
    });
  });
}

function findLine(text: string, pattern: RegExp): string | undefined {
  const match = pattern.exec(text);
  if (!match) return undefined;
  const start = text.lastIndexOf('\n', match.index) + 1;
  const end = text.indexOf('\n', match.index + match[0].length);
  return text.slice(start, end === -1 ? undefined : end);
}
